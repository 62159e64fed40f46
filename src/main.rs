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
    /// Online binary upgrade: ask the running pooler (found by its pid file) to start this
    /// binary's path as a new generation that takes over its listening sockets.
    #[arg(long, conflicts_with_all = ["check", "convert", "daemon"])]
    upgrade: bool,
    /// PgBouncer's online restart: refused, see the message.
    #[arg(short = 'R', long = "reboot", hide = true)]
    reboot: bool,
}

/// The path this binary was launched with, made absolute: an upgrade execs the file at
/// this path, which a package upgrade has replaced (/proc/self/exe would still name the
/// old, deleted file). A bare name is looked up in PATH, as the shell did.
fn launch_path() -> PathBuf {
    let arg0 = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_default();
    if arg0.components().count() > 1 {
        return std::env::current_dir()
            .map(|d| d.join(&arg0))
            .unwrap_or(arg0);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(&arg0))
        .find(|p| p.is_file())
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or(arg0)
}

/// `--upgrade`: signals the supervisor the pid file names and waits until the pid file
/// names its successor (0), or the upgrade is refused or fails (1, with the reason).
fn upgrade(pidfile: Option<PathBuf>) -> i32 {
    use pgbouncers_supervisor::upgrade;
    let Some(pidfile) = pidfile else {
        eprintln!("pgbouncers: --upgrade finds the running pooler by its pid file: set pidfile or --pidfile");
        return 1;
    };
    let read_pid = || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    };
    let Some(old) = read_pid() else {
        eprintln!(
            "pgbouncers: pid file {} names no process",
            pidfile.display()
        );
        return 1;
    };
    let status = upgrade::status_path(&pidfile);
    let _ = std::fs::remove_file(&status);
    if let Err(e) = upgrade::request(old) {
        eprintln!(
            "pgbouncers: cannot signal pid {old} from {}: {e}",
            pidfile.display()
        );
        return 1;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let Some(new) = read_pid().filter(|&p| p != old) {
            println!("pgbouncers: upgraded: supervisor pid {old} handed over to pid {new}");
            return 0;
        }
        if let Ok(why) = std::fs::read_to_string(&status) {
            let _ = std::fs::remove_file(&status);
            eprintln!("pgbouncers: upgrade {}", why.trim_end());
            eprintln!("pgbouncers: pid {old} goes on serving");
            return 1;
        }
    }
    eprintln!("pgbouncers: pid {old} did not hand over in 90s; see its log");
    1
}

fn main() {
    // First of all: the descriptors an upgrade handed us must be claimed before anything
    // else opens one.
    let inherited = match pgbouncers_supervisor::upgrade::Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pgbouncers: upgrade: {e}");
            std::process::exit(1);
        }
    };
    let exe = launch_path();
    let args = Args::parse();
    if args.reboot {
        eprintln!(
            "pgbouncers: -R/--reboot (PgBouncer's online restart through the Unix socket) is not \
             supported: pgbouncers' online upgrade is `pgbouncers --upgrade -c CONFIG`, which \
             starts the new binary with the running pooler's listening sockets, hands idle \
             clients over and drains the old one"
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
            if let Some(inh) = &inherited {
                inh.fail(&e.to_string());
            }
            std::process::exit(1);
        }
    };
    if args.check || args.upgrade {
        let files = pgbouncers_supervisor::check_tls(&cfg)
            .and_then(|()| pgbouncers_supervisor::read_userlist(&cfg))
            .and_then(|_| pgbouncers_supervisor::read_hba(&cfg));
        if let Err(e) = files {
            eprintln!("pgbouncers: {e}");
            std::process::exit(1);
        }
        if args.upgrade {
            // Checked here first so a broken file never reaches the running pooler; the
            // new supervisor checks it again (it may change meanwhile).
            let pidfile = args.pidfile.or(cfg.pidfile.as_ref().map(PathBuf::from));
            std::process::exit(upgrade(pidfile));
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
    // What a successor is started with: the same command line, minus -d (detached already).
    let mut upgrade_args: Vec<std::ffi::OsString> = vec!["-c".into(), path.clone().into()];
    if let Some(n) = args.workers {
        upgrade_args.extend(["--workers".into(), n.to_string().into()]);
    }
    if let Some(u) = &args.user {
        upgrade_args.extend(["-u".into(), u.into()]);
    }
    if let Some(p) = &args.pidfile {
        let p = std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or(p.clone());
        upgrade_args.extend(["--pidfile".into(), p.into()]);
    }
    for _ in 0..args.verbose {
        upgrade_args.push("-v".into());
    }
    if args.quiet {
        upgrade_args.push("-q".into());
    }
    let pidfile = args.pidfile.or(cfg.pidfile.as_ref().map(PathBuf::from));
    // A new generation writes the pid file once it has taken over, not now: it names the
    // old one until then.
    let create = pidfile.as_ref().filter(|_| inherited.is_none());
    let _pidfile = match create.map(|p| pgbouncers_supervisor::daemon::PidFile::create(p)) {
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
        exe,
        args: upgrade_args,
        pidfile,
        inherited,
    };
    let code = pgbouncers_supervisor::run(opts, cfg);
    drop(_pidfile);
    std::process::exit(code);
}
