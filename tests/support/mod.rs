//! Helpers shared by the integration tests (`mod support;`) and by the fuzz crate in `fuzz/`,
//! which includes this directory by path so that the harness exists once.
//!
//! Each test crate uses a different subset, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod fuzz;
pub mod repo;
