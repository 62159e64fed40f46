//! pgbouncers command line: parse arguments, set up logging, hand the config to the supervisor.

use clap::Parser;
use pgbouncers_worker::config::Config;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pgbouncers",
    version,
    about = "A multi-process, PROXY-protocol-aware PostgreSQL connection pooler"
)]
struct Args {
    /// Configuration file (YAML).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Configuration file, as PgBouncer takes it.
    #[arg(value_name = "CONFIG_FILE", conflicts_with = "config")]
    config_file: Option<PathBuf>,
    /// Number of worker processes; overrides `workers` in the file.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// Validate the configuration and exit: 0 when valid, 1 with the reason when not.
    #[arg(long)]
    check: bool,
    /// More log output; repeat for more.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() {
    let args = Args::parse();
    let Some(path) = args.config.or(args.config_file) else {
        eprintln!("pgbouncers: a configuration file is required (-c FILE)");
        std::process::exit(2);
    };
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgbouncers: {e}");
            std::process::exit(1);
        }
    };
    if args.check {
        println!("pgbouncers: configuration file {} is valid", path.display());
        return;
    }
    let level = match args.verbose.max(cfg.verbose) {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, record| {
            writeln!(
                buf,
                "{} [{}] {} {}",
                buf.timestamp_millis(),
                std::process::id(),
                record.level(),
                record.args()
            )
        })
        .init();
    let opts = pgbouncers_supervisor::Options {
        config_path: path,
        workers: args.workers.map(usize::from),
    };
    std::process::exit(pgbouncers_supervisor::run(opts, cfg));
}
