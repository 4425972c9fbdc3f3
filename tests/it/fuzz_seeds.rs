//! The fuzz target's checks over the committed seeds, on stable and without libFuzzer: every
//! hand-picked input (and every input a fuzz run once failed on, after its fix) stays a test.
//! `scripts/fuzz` runs the same checks under libFuzzer.

#[path = "../../fuzz/src/client_input.rs"]
mod client_input;

#[test]
fn every_seed_input_passes_the_fuzz_checks() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/client_input");
    let mut seeds: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 30, "only {} seeds in {dir}", seeds.len());
    let failed: Vec<String> = seeds
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap();
            std::panic::catch_unwind(|| client_input::check(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "seeds failing the fuzz checks: {failed:?}"
    );
}
