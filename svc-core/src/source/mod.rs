//! Where objects come from without an API server: [`manifests`], a directory of YAML.
pub mod manifests;
