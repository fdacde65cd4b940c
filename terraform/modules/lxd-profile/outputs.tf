output "name" {
  description = "Name of the profile, for instances' profiles list."
  value       = lxd_profile.this.name
}
