pub mod agent;
pub mod capture;
pub mod fixtures;
pub mod probe;
pub mod topology;
