//! HTTP routes, one module per area.

pub mod admin;
pub mod device;
pub mod fleet;
pub mod health;
pub mod operator;
pub mod publish;
pub mod repo;
