//! `keel local`.
#[derive(clap::Args, Debug)]
pub struct LocalArgs {}
pub async fn run(_a: LocalArgs) -> Result<(), String> {
    Err("not yet".into())
}
