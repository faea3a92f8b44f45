pub mod fixtures;
pub mod capture;
pub mod probe;
pub mod topology;
