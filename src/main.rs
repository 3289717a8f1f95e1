use std::process::ExitCode;

fn main() -> ExitCode {
    // Everything hookrelay writes (database, write-ahead log, logs, backups) holds endpoint
    // secrets, custom header values or payloads: readable by its owner only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Before any thread starts: real environment variables win over `.env`.
    hookrelay::cli::load_dotenv();
    let cli = hookrelay::cli::Cli::parse_args();
    // Sentry must start before the runtime's threads.
    let _telemetry = hookrelay::telemetry::init(cli.is_serve());
    // Sized from the configuration before any thread starts; an invalid configuration is
    // reported by the command itself, which reads it again.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let workers =
        hookrelay::Config::from_env().map_or(cores, |(config, _)| config.runtime_workers(cores));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
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
