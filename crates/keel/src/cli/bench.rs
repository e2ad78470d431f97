//! `keel bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}
pub async fn run(_a: BenchArgs) -> Result<(), String> {
    Err("not yet".into())
}
