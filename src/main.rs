use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread starts: real environment variables win over `.env`.
    let _ = dotenvy::dotenv();
    let cli = hookrelay::cli::Cli::parse();
    hookrelay::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(hookrelay::cli::run(cli))
}
