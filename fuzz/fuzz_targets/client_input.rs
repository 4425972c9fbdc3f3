//! Everything a replica parses from a client, fed arbitrary bytes; see
//! `stickyws_fuzz::client_input` for how one input is used and what is asserted.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stickyws_fuzz::client_input::check(data));
