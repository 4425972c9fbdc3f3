//! The checks behind the fuzz targets, kept apart from libFuzzer so that the integration tests
//! run them on stable over the committed seeds (`tests/it/fuzz_seeds.rs`).

pub mod client_input;
