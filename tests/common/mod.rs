//! Helpers shared by the integration tests; each test crate uses a subset.
#![allow(dead_code)]

pub mod bus;
pub mod netns;
pub mod sysfs_fixture;
