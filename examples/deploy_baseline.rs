//! Writes `deploy/baselines/fraud.json`, the baseline the docker compose
//! stack monitors the simulator's `fraud` model with: 50,000 rows of the
//! simulator's pre-drift traffic profiled by `baseline build`'s code, as
//! the demo does at start.
//!
//! Run: `cargo run --example deploy_baseline`

fn main() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("driftwatch-deploy-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let built = driftwatch::drivers::demo::build_baseline(&dir, 50_000, 43)?;
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/baselines/fraud.json");
    std::fs::copy(&built, &target).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("wrote {}", target.display());
    Ok(())
}
