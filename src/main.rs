//! pgbouncers command line: parse arguments, set up logging, hand the config to the supervisor.

use clap::Parser;
use pgbouncers_worker::config::Config;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pgbouncers",
    // The first line of -V names the PgBouncer whose behaviour this release follows.
    version = concat!(env!("CARGO_PKG_VERSION"), " (PgBouncer 1.25 compatible)"),
    about = "A multi-process, PROXY-protocol-aware PostgreSQL connection pooler"
)]
struct Args {
    /// Configuration file: YAML, or PgBouncer's pgbouncer.ini (told apart by content).
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
    /// Print FILE (PgBouncer's pgbouncer.ini, or YAML) as the equivalent YAML and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "config_file"])]
    convert: Option<PathBuf>,
    /// Run in the background (logs go to `logfile`).
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Write the supervisor's pid here; overrides `pidfile` in the file.
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// More log output; repeat for more.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Never log to stderr (PgBouncer's -q, for init scripts); a logfile still gets it all.
    #[arg(short, long)]
    quiet: bool,
    /// Run the workers as this OS user; overrides `user` in the file.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
    /// PgBouncer's online restart: refused, see the message.
    #[arg(short = 'R', long = "reboot", hide = true)]
    reboot: bool,
}

fn main() {
    let args = Args::parse();
    if args.reboot {
        eprintln!(
            "pgbouncers: -R/--reboot (PgBouncer's online restart through the Unix socket) is not \
             supported: pgbouncers' own online upgrade, which hands listening sockets and \
             connections to a new binary, is planned; until then restart with SIGTERM (which \
             lets transactions finish) or run the new version beside the old one on the same \
             port (SO_REUSEPORT) and stop the old one"
        );
        std::process::exit(1);
    }
    if let Some(path) = &args.convert {
        // The same reading as a start or a reload: what is printed is what would run.
        match Config::read_file(path) {
            Ok((yaml, _)) => {
                print!("{yaml}");
                return;
            }
            Err(e) => {
                eprintln!("pgbouncers: {e}");
                std::process::exit(1);
            }
        }
    }
    let Some(path) = args.config.or(args.config_file) else {
        eprintln!("pgbouncers: a configuration file is required (-c FILE)");
        std::process::exit(2);
    };
    // Reloads read the same file even if the working directory changes.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgbouncers: {e}");
            std::process::exit(1);
        }
    };
    if args.check {
        let files = pgbouncers_supervisor::check_tls(&cfg)
            .and_then(|()| pgbouncers_supervisor::read_userlist(&cfg))
            .and_then(|_| pgbouncers_supervisor::read_hba(&cfg));
        if let Err(e) = files {
            eprintln!("pgbouncers: {e}");
            std::process::exit(1);
        }
        println!("pgbouncers: configuration file {} is valid", path.display());
        return;
    }
    let level = match args.verbose.max(cfg.verbose) {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let mut logger = env_logger::Builder::new();
    logger
        .filter_level(level)
        .parse_default_env()
        .format(|buf, record| {
            // Call sites escape what clients sent (logsafe::Escaped); this is the last line of
            // defence: whatever a site missed still cannot start a line of its own.
            let msg = record.args().to_string();
            writeln!(
                buf,
                "{} [{}] {} {}",
                buf.timestamp_millis(),
                std::process::id(),
                record.level(),
                pgbouncers_worker::logsafe::controls(&msg)
            )
        });
    // Always through LogWriter (stderr until a logfile is set), so a reload can move the log.
    logger.target(env_logger::Target::Pipe(Box::new(
        pgbouncers_worker::logfile::LogWriter,
    )));
    if let Some(file) = cfg.logfile.as_deref().filter(|f| !f.is_empty()) {
        if let Err(e) = pgbouncers_worker::logfile::open(file) {
            eprintln!("pgbouncers: logfile {file}: {e}");
            std::process::exit(1);
        }
    } else if args.daemon {
        eprintln!("pgbouncers: --daemon without a logfile: log output is discarded");
    }
    if args.quiet {
        pgbouncers_worker::logfile::quiet();
    }
    logger.init();
    if args.daemon {
        if let Err(e) = pgbouncers_supervisor::daemon::daemonize() {
            log::error!("cannot become a daemon: {e}");
            std::process::exit(1);
        }
    }
    let pidfile = args.pidfile.or(cfg.pidfile.as_ref().map(PathBuf::from));
    let _pidfile = match pidfile.map(|p| pgbouncers_supervisor::daemon::PidFile::create(&p)) {
        Some(Err(e)) => {
            log::error!("{e}");
            std::process::exit(1);
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let opts = pgbouncers_supervisor::Options {
        config_path: path,
        workers: args.workers.map(usize::from),
        user: args.user,
    };
    let code = pgbouncers_supervisor::run(opts, cfg);
    drop(_pidfile);
    std::process::exit(code);
}
