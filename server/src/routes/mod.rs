//! HTTP routes, one module per area.

pub mod admin;
pub mod health;
pub mod publish;
pub mod repo;
