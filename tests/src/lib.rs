pub mod agent;
pub mod apiserver;
pub mod capture;
pub mod fixtures;
pub mod kubeproxy;
pub mod probe;
pub mod topology;
pub mod traffic;
