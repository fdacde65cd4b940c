"""The naive baseline: the product read as it is often first written.

The Flask development server (`flask run`), a new PostgreSQL connection per
request (no pool), no cache and no replica: every read goes to the primary.
Same table, same rows and the same JSON shape as GET /api/v1/products/<id>.
It reads FLASKFLEET_DATABASE_URL from the app's environment file.
"""

import os

import psycopg2
import psycopg2.extras
from flask import Flask, abort, jsonify

app = Flask(__name__)


@app.get("/api/v1/products/<int:product_id>")
def product(product_id):
    conn = psycopg2.connect(os.environ["FLASKFLEET_DATABASE_URL"])
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                "SELECT id, sku, name, description, price_cents, stock, created_at, updated_at"
                " FROM products WHERE id = %s",
                (product_id,),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        abort(404)
    row["created_at"] = row["created_at"].isoformat()
    row["updated_at"] = row["updated_at"].isoformat()
    return jsonify(row)
