//! The command line (docs/REFERENCE.md). Exit codes: 0 success, 1 a check failed or
//! bad input, 2 usage error; `gate`: 0 pass, 1 fail, 2 bad input or usage
//! error (docs/GATE.md).

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::output::{NdjsonSink, WindowSink};
use crate::shutdown::Shutdown;
use crate::simulate::SimulatorOptions;
use crate::telemetry::Telemetry;

#[derive(Debug, Parser)]
#[command(name = "driftwatch", version, about = "Streaming model monitoring: drift, performance and alerts from Kafka")]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// The daemon's config file (driftwatch.yaml; docs/CONFIG.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the engine over files instead of Kafka.
    Replay {
        /// The config file whose models, windows and rules to use (its
        /// `kafka` section is ignored).
        #[arg(long)]
        config: PathBuf,
        /// Prediction files (NDJSON or Parquet, by extension).
        #[arg(long, num_args = 1.., required = true)]
        predictions: Vec<PathBuf>,
        /// Label files (NDJSON or Parquet, by extension).
        #[arg(long, num_args = 1..)]
        labels: Vec<PathBuf>,
        /// Where to write window_metrics rows as NDJSON (default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where to write alert transitions (NDJSON).
        #[arg(long)]
        alerts: Option<PathBuf>,
        /// Send notifications for alerts.
        #[arg(long)]
        notify: bool,
        /// Lanes: threads that read, decode and aggregate the predictions
        /// files in parallel, each a share of the files (default
        /// `pipeline.lanes`: the number of cores). A single file is read
        /// by one lane. The output is the same for any number.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        lanes: Option<u16>,
        /// Take a checkpoint, as the daemon does, each time this many more
        /// predictions have been read, and report what the checkpoints
        /// cost (time and size). Needs `state.dir`; one lane. The
        /// checkpoints are removed at the end.
        #[arg(long, value_name = "PREDICTIONS", value_parser = clap::value_parser!(u64).range(1..))]
        checkpoint_every: Option<u64>,
    },
    /// Everything in one process, nothing to install.
    Demo {
        /// How long the demo runs (wall clock).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Address for the demo daemon's HTTP API and status page
        /// (default: a free port on 127.0.0.1).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Baseline profiles.
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Alert rule tooling.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Configuration tooling.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// A CI performance gate: the old and the new model's metrics against
    /// requirements (docs/GATE.md). Exit 0 when every requirement holds, 1
    /// when one fails, 2 on bad input.
    Gate(GateArgs),
    /// Generate realistic prediction and label traffic.
    Simulate {
        /// Produce to these Kafka brokers in real time.
        #[arg(long, conflicts_with = "out", required_unless_present = "out")]
        brokers: Option<String>,
        /// Write predictions to this NDJSON file (labels go to `<stem>.labels.ndjson`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Events per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// How long (event time for files, wall time for brokers).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Inject drift this long after the start.
        #[arg(long, value_parser = parse_duration)]
        drift_at: Option<Duration>,
        /// Random seed: the same seed gives the same events.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Model name in the events.
        #[arg(long, default_value = "fraud")]
        model: String,
        /// Topic for predictions (brokers mode).
        #[arg(long, default_value = "predictions")]
        predictions_topic: String,
        /// Topic for labels (brokers mode).
        #[arg(long, default_value = "labels")]
        labels_topic: String,
    },
}

/// `driftwatch gate` (offline: `--old FILE` or `--old-baseline FILE`, and
/// `--new FILE`; online: `--from URL --model M --champion V --candidate V`).
#[derive(Debug, clap::Args)]
pub struct GateArgs {
    /// Labelled evaluation rows with the old model's predictions (Parquet,
    /// CSV or NDJSON, by extension).
    #[arg(long, required_unless_present_any = ["old_baseline", "from"], conflicts_with = "old_baseline")]
    pub old: Option<PathBuf>,
    /// A baseline profile (`baseline build`) whose recorded performance
    /// stands for the old model, instead of --old.
    #[arg(long)]
    pub old_baseline: Option<PathBuf>,
    /// Labelled evaluation rows with the new model's predictions.
    #[arg(long, required_unless_present = "from")]
    pub new: Option<PathBuf>,
    /// Online: a running daemon's HTTP API (e.g. http://127.0.0.1:9464);
    /// the champion is the old side, the candidate the new one.
    #[arg(long, value_name = "URL", conflicts_with_all = ["old", "old_baseline", "new"], requires_all = ["model", "champion", "candidate"])]
    pub from: Option<String>,
    /// Online: the model whose versions are compared.
    #[arg(long, requires = "from")]
    pub model: Option<String>,
    /// Online: the version in service (the old side).
    #[arg(long, requires = "from")]
    pub champion: Option<String>,
    /// Online: the canary or shadow version (the new side).
    #[arg(long, requires = "from")]
    pub candidate: Option<String>,
    /// Online: windows that started within this time before now.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, requires = "from")]
    pub since: Duration,
    /// Online: the fewest labelled predictions each version needs; with
    /// fewer the gate does not pass, and says so.
    #[arg(long, default_value_t = 100, requires = "from")]
    pub min_labels: u64,
    /// A requirement on the new model, e.g. 'accuracy >= 0.90',
    /// 'latency_p95 < 150ms', 'f1 >= old - 0.01' (repeatable).
    #[arg(long = "require", required = true, value_name = "EXPR")]
    pub requirements: Vec<String>,
    /// How to print the report.
    #[arg(long, value_enum, default_value_t = crate::gate::format::Format::Table)]
    pub format: crate::gate::format::Format,
    /// Write the report to this file instead of stdout (the verdict still
    /// goes to stderr).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The column holding the true label or target value (default `label`).
    #[arg(long)]
    pub label_column: Option<String>,
    /// The column holding the model's prediction (default `prediction`).
    #[arg(long)]
    pub prediction_column: Option<String>,
    /// The column holding the score, the probability of the positive class
    /// (default `score`, optional).
    #[arg(long)]
    pub score_column: Option<String>,
    /// The column holding the serving latency in milliseconds (default
    /// `latency_ms`, optional).
    #[arg(long)]
    pub latency_column: Option<String>,
    /// The column pairing the two files' rows (default `event_id`; rows
    /// are paired when both files have it).
    #[arg(long)]
    pub event_id_column: Option<String>,
    /// binary_classification, multiclass_classification or regression
    /// (default: the baseline's, else inferred from the column types).
    #[arg(long)]
    pub task: Option<String>,
    /// A binary model's positive class (default `1`).
    #[arg(long)]
    pub positive_class: Option<String>,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = crate::gate::significance::DEFAULT_RESAMPLES)]
    pub bootstrap_resamples: usize,
    /// Seed of the bootstrap resampling (the same seed gives the same intervals).
    #[arg(long, default_value_t = crate::gate::significance::DEFAULT_SEED)]
    pub seed: u64,
}

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Build a baseline profile from training data (Parquet, CSV or NDJSON).
    Build {
        /// Input files or glob patterns.
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<String>,
        /// The model's name, as in the config and the events.
        #[arg(long)]
        model: String,
        /// The model version the training data belongs to, recorded in the profile.
        #[arg(long)]
        version: Option<String>,
        /// Where to write the profile (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Read the inputs as logged events of --model with this config's
        /// field mapping (JSON Pointers), task and classes, instead of as
        /// a table.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The column holding the true label or target value (default
        /// `label`; when given, the input must have it).
        #[arg(long, conflicts_with = "config")]
        label_column: Option<String>,
        /// The column holding the model's prediction (default `prediction`;
        /// when given, the input must have it).
        #[arg(long, conflicts_with = "config")]
        prediction_column: Option<String>,
        /// The column holding the score, the probability of the positive
        /// class (default `score`; when given, the input must have it).
        #[arg(long, conflicts_with = "config")]
        score_column: Option<String>,
        /// Only these columns are features (comma-separated).
        #[arg(long, value_delimiter = ',')]
        features: Option<Vec<String>>,
        /// Columns that are not features (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// Numeric columns to profile as categories, e.g. integer codes
        /// (comma-separated). Values are named as the decoder names JSON
        /// numbers: `12.0` → `12`.
        #[arg(long, value_delimiter = ',')]
        categorical: Vec<String>,
        /// Quantile bins per numeric feature.
        #[arg(long, default_value_t = crate::profiling::DEFAULT_BINS)]
        bins: usize,
        /// Categories kept per categorical column; the rest count as `other`.
        #[arg(long, default_value_t = crate::profiling::DEFAULT_TOP_CATEGORIES)]
        top_categories: usize,
        /// binary_classification, multiclass_classification or regression
        /// (inferred from the label/prediction column type when absent).
        #[arg(long)]
        task: Option<String>,
        /// DVC `md5` of the dataset, recorded in the profile.
        #[arg(long)]
        dvc_md5: Option<String>,
        /// MLflow run id, recorded in the profile.
        #[arg(long)]
        mlflow_run_id: Option<String>,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate rule files: syntax, SQL planned against `window_metrics`,
    /// templates, duplicate names, and (with --config) notifier names.
    Check {
        /// Rule files (YAML) to check.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Check `notify` names against this config's notifiers.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run rule unit tests (format: docs/RULES.md).
    Test {
        /// Rule-test files (YAML) to run.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config and print it with secrets redacted.
    Check {
        /// The config file to check.
        #[arg(long)]
        config: PathBuf,
    },
}

fn rules_check(paths: &[PathBuf], config: Option<&std::path::Path>) -> Result<(), ExitCode> {
    let notifiers = match config {
        Some(path) => Some(load_config(path)?.notifiers.keys().cloned().collect()),
        None => None,
    };
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let pattern = glob::Pattern::escape(&path.to_string_lossy()) + "/*.y*ml";
            let mut found: Vec<PathBuf> = glob::glob(&pattern).into_iter().flatten().flatten().collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    match crate::rules::RuleSet::load(&files, notifiers.as_ref()) {
        Ok(set) => {
            let note = if notifiers.is_none() { " (notifier names not checked: no --config)" } else { "" };
            let rules = count_of(set.rules.len(), "rule", "rules");
            println!("{rules} in {}: OK{note}", count_of(files.len(), "file", "files"));
            Ok(())
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            eprintln!("{}", count_of(errors.len(), "error", "errors"));
            Err(ExitCode::from(1))
        }
    }
}

fn rules_test(files: &[PathBuf]) -> Result<(), ExitCode> {
    let mut failed = false;
    for file in files {
        match crate::rules::testing::run_test_file(file) {
            Ok(report) => {
                for (name, explanation) in &report.failures {
                    println!("FAIL {}: {name}\n{explanation}", file.display());
                }
                println!("{}: {} passed, {} failed", file.display(), report.passed, report.failures.len());
                failed |= !report.failures.is_empty();
            }
            Err(error) => {
                eprintln!("{error}");
                failed = true;
            }
        }
    }
    if failed { Err(ExitCode::from(1)) } else { Ok(()) }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// Logs to stderr (human or JSON) at `default_level` unless
/// `DRIFTWATCH_LOG` says otherwise, and exports spans over OTLP when
/// `spans` is given.
fn init_logging(format: LogFormat, default_level: &str, spans: Option<&crate::otlp::Tracing>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRIFTWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter).with(spans.map(|s| s.layer()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(io::stderr).with_ansi(colours_wanted());
    let _ = match format {
        LogFormat::Human => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
}

/// Colours only for a person at a terminal: not when stderr goes to a file,
/// a pipe or a log collector, nor when `NO_COLOR` is set (no-color.org).
fn colours_wanted() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    io::stderr().is_terminal() && !no_color
}

/// `1 error`, `2 errors` (see [`crate::text::count_of`]).
fn count_of(count: usize, singular: &str, plural: &str) -> String {
    crate::text::count_of(count as u64, singular, plural)
}

/// Span export for `run` when its config asks for OTLP traces (a config
/// that does not load is reported by the command itself).
fn span_export(command: &Command) -> Option<crate::otlp::Tracing> {
    let Command::Run { config } = command else { return None };
    let otlp = Config::load(config).ok()?.otlp?;
    match crate::otlp::Tracing::start(&otlp) {
        Ok(tracing) => tracing,
        Err(error) => {
            eprintln!("driftwatch: {error}; spans are not exported");
            None
        }
    }
}

/// Once shutdown is asked for, gives the daemon `timeout` to drain,
/// checkpoint and commit, then exits the process (code 1) regardless.
fn spawn_shutdown_watchdog(shutdown: &Shutdown, timeout: Duration) {
    let shutdown = shutdown.clone();
    let spawned = std::thread::Builder::new().name("shutdown-watchdog".to_string()).spawn(move || {
        while !shutdown.is_triggered() {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(timeout);
        tracing::error!(?timeout, "shutdown took longer than pipeline.shutdown_timeout; exiting now");
        std::process::exit(1);
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "shutdown watchdog not started");
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(1)
    })
}

/// Labels file next to a predictions file: `x.ndjson` → `x.labels.ndjson`.
pub fn labels_path_for(predictions: &Path) -> PathBuf {
    let stem = predictions.file_stem().and_then(|s| s.to_str()).unwrap_or("events");
    predictions.with_file_name(format!("{stem}.labels.ndjson"))
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { 2 } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    let spans = span_export(&cli.command);
    // The demo narrates on stdout; its daemon's logs would drown that.
    let level = if matches!(cli.command, Command::Demo { .. }) { "warn" } else { "info" };
    init_logging(cli.log_format, level, spans.as_ref());
    let outcome = run_command(cli.command);
    drop(spans);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run_command(command: Command) -> Result<(), ExitCode> {
    match command {
        Command::Run { config: config_path } => {
            let config = load_config(&config_path)?;
            let shutdown = Shutdown::new();
            shutdown.install_signal_handlers().map_err(|e| {
                eprintln!("installing signal handlers: {e}");
                ExitCode::from(1)
            })?;
            spawn_shutdown_watchdog(&shutdown, config.pipeline.shutdown_timeout);
            let telemetry = Arc::new(Telemetry::default());
            let reload = Arc::new(std::sync::atomic::AtomicBool::new(false));
            if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone()) {
                tracing::warn!(error = %e, "SIGHUP handler not installed: config reload by signal unavailable");
            }
            let run = crate::drivers::run::run_daemon_with_config_file;
            run(&config, Some(&config_path), telemetry, &shutdown, &reload, None).map_err(|e| {
                eprintln!("driftwatch: {e}");
                ExitCode::from(1)
            })?;
            Ok(())
        }
        Command::Replay { config, predictions, labels, out, alerts, notify, lanes, checkpoint_every } => {
            let config = load_config(&config)?;
            let rules = Arc::new(crate::alerting::load_rules(&config).map_err(|errors| {
                for error in errors {
                    eprintln!("{error}");
                }
                ExitCode::from(1)
            })?);
            let telemetry = Arc::new(Telemetry::default());
            let mut rows_sink: Box<dyn WindowSink + Send> = match &out {
                Some(path) => {
                    let file = File::create(path).map_err(|e| {
                        eprintln!("{}: {e}", path.display());
                        ExitCode::from(1)
                    })?;
                    Box::new(NdjsonSink::new(BufWriter::new(file)))
                }
                None => Box::new(NdjsonSink::new(BufWriter::new(io::stdout()))),
            };
            let audit = crate::alerting::open_audit(&config).map_err(|e| {
                eprintln!("driftwatch replay: audit log: {e}");
                ExitCode::from(1)
            })?;
            let dispatcher = if notify {
                Some(crate::notify::start(&config, audit.clone(), telemetry.clone()).map_err(|e| {
                    eprintln!("driftwatch replay: {e}");
                    ExitCode::from(1)
                })?)
            } else {
                None
            };
            let mut sink =
                crate::alerting::AlertingSink::new(rows_sink.as_mut(), &config, rules, alerts.as_deref(), audit)
                    .map_err(|e| {
                        eprintln!("driftwatch replay: alerts file: {e}");
                        ExitCode::from(1)
                    })?;
            if let Some(dispatcher) = &dispatcher {
                sink.on_events = Some(Box::new(move |events| dispatcher.submit(events)));
            }
            let options = crate::drivers::replay::ReplayOptions {
                lanes: lanes.map_or_else(|| config.pipeline.lanes(), usize::from),
                checkpoint_every,
            };
            let result = crate::drivers::replay::replay_with_options(
                &config,
                &predictions,
                &labels,
                &mut sink,
                telemetry.clone(),
                &options,
            );
            let transitions = sink.events.len();
            let firing = sink.events.iter().filter(|e| e.transition.state == "firing").count();
            drop(sink);
            // Deliveries (with their retries) finish before the replay ends,
            // or are given up after the retry budget; either way a replay
            // whose notifications did not all arrive fails.
            let mut notifications_failed = false;
            if let Some(dispatcher) = &dispatcher {
                let budget = dispatcher.retry_budget();
                let pending = if dispatcher.wait_idle(budget) { 0 } else { dispatcher.pending().max(1) };
                let delivered: u64 =
                    telemetry.notifications().iter().filter(|((_, o), _)| o == "delivered").map(|(_, n)| n).sum();
                eprintln!("{} delivered", count_of(delivered as usize, "notification", "notifications"));
                let given_up = dispatcher.given_up();
                if pending > 0 {
                    eprintln!(
                        "driftwatch replay: {pending} notifications still undelivered after the retry budget of {} \
                         (delivery.max_attempts, delivery.retry_max; kept in the outbox when state.dir is set)",
                        humantime::format_duration(budget)
                    );
                }
                if given_up > 0 {
                    eprintln!(
                        "driftwatch replay: {given_up} notifications failed (each attempt and its error is in the log \
                         and the audit log)"
                    );
                }
                notifications_failed = pending > 0 || given_up > 0;
            }
            match result {
                Ok(summary) => {
                    if !config.rules.is_empty() {
                        eprintln!(
                            "{} ({firing} firing)",
                            count_of(transitions, "alert transition", "alert transitions")
                        );
                    }
                    let rate = summary.predictions as f64 / summary.seconds.max(1e-9);
                    eprintln!(
                        "replayed {} and {} ({} invalid) in {:.2}s ({:.0} predictions/s): {} closed, {}",
                        count_of(summary.predictions as usize, "prediction", "predictions"),
                        count_of(summary.labels as usize, "label", "labels"),
                        summary.invalid,
                        summary.seconds,
                        rate,
                        count_of(summary.windows_closed as usize, "window", "windows"),
                        count_of(summary.rows as usize, "row", "rows")
                    );
                    if summary.labels > 0 || summary.predictions_unlabelled > 0 {
                        eprintln!("{}", summary.join_report());
                    }
                    if let Some(report) = summary.checkpoint_report() {
                        eprintln!("{report}");
                    }
                    if notifications_failed { Err(ExitCode::from(1)) } else { Ok(()) }
                }
                Err(error) => {
                    eprintln!("driftwatch replay: {error}");
                    Err(ExitCode::from(1))
                }
            }
        }
        Command::Config { command: ConfigCommand::Check { config } } => {
            let config = load_config(&config)?;
            print!("{}", config.to_redacted_yaml());
            Ok(())
        }
        Command::Simulate { brokers, out, rate, duration, drift_at, seed, model, predictions_topic, labels_topic } => {
            if !(rate.is_finite() && rate > 0.0) {
                eprintln!("--rate must be a positive number of events per second");
                return Err(ExitCode::from(2));
            }
            let options = SimulatorOptions {
                model,
                rate,
                seed,
                drift_after_ms: drift_at.map(|d| d.as_millis() as i64),
                ..SimulatorOptions::default()
            };
            let summary = if let Some(out) = out {
                let labels = labels_path_for(&out);
                crate::drivers::simulate::simulate_to_files(options, duration.as_millis() as i64, &out, &labels)
                    .map_err(|e| {
                        eprintln!("simulate: {e}");
                        ExitCode::from(1)
                    })?
            } else {
                let shutdown = Shutdown::new();
                let _ = shutdown.install_signal_handlers();
                let brokers = brokers.unwrap_or_default();
                crate::drivers::simulate::simulate_to_kafka(
                    options,
                    duration,
                    &brokers,
                    &predictions_topic,
                    &labels_topic,
                    &shutdown,
                )
                .map_err(|e| {
                    eprintln!("simulate: {e}");
                    ExitCode::from(1)
                })?
            };
            eprintln!(
                "simulated {} and {}",
                count_of(summary.predictions as usize, "prediction", "predictions"),
                count_of(summary.labels as usize, "label", "labels")
            );
            Ok(())
        }
        Command::Demo { duration, listen } => {
            let options = crate::drivers::demo::DemoOptions { duration, listen, ..Default::default() };
            let mut stdout = io::stdout();
            let summary = crate::drivers::demo::run_demo(&options, &mut stdout).map_err(|e| {
                eprintln!("driftwatch demo: {e}");
                ExitCode::from(1)
            })?;
            crate::drivers::demo::print_summary(&summary, &mut stdout);
            Ok(())
        }
        Command::Baseline { command } => baseline_command(command),
        Command::Gate(args) => gate_command(args),
        Command::Rules { command: RulesCommand::Check { paths, config } } => rules_check(&paths, config.as_deref()),
        Command::Rules { command: RulesCommand::Test { files } } => rules_test(&files),
    }
}

/// `driftwatch gate`: exit 0 pass, 1 fail, 2 bad input.
fn gate_command(args: GateArgs) -> Result<(), ExitCode> {
    use crate::gate::{EXIT_BAD_INPUT, Requirement, offline};
    let bad_input = |message: String| {
        eprintln!("driftwatch gate: {message}");
        ExitCode::from(EXIT_BAD_INPUT)
    };
    let requirements = args
        .requirements
        .iter()
        .map(|text| Requirement::parse(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_input(e.to_string()))?;
    let task = match args.task.as_deref() {
        None => None,
        Some("binary_classification") => Some(crate::config::Task::BinaryClassification),
        Some("multiclass_classification") => Some(crate::config::Task::MulticlassClassification),
        Some("regression") => Some(crate::config::Task::Regression),
        Some(other) => {
            return Err(bad_input(format!(
                "--task {other}: use binary_classification, multiclass_classification or regression"
            )));
        }
    };
    if args.bootstrap_resamples == 0 {
        return Err(bad_input("--bootstrap-resamples must be at least 1".to_string()));
    }
    if let Some(from) = &args.from {
        let since = chrono::Duration::from_std(args.since).unwrap_or(chrono::Duration::MAX);
        let query = crate::gate::online::OnlineQuery {
            from: from.clone(),
            model: args.model.clone().unwrap_or_default(),
            champion: args.champion.clone().unwrap_or_default(),
            candidate: args.candidate.clone().unwrap_or_default(),
            since_ms: (chrono::Utc::now() - since).timestamp_millis(),
            min_labels: args.min_labels,
        };
        let rows = crate::gate::online::fetch_rows(&query).map_err(|e| bad_input(e.to_string()))?;
        let report = crate::gate::online::gate(&query, &requirements, &rows);
        return print_gate_report(&report, args.format, args.out.as_deref());
    }
    let defaults = offline::ColumnNames::default();
    let required = [
        ("--label-column", &args.label_column),
        ("--prediction-column", &args.prediction_column),
        ("--score-column", &args.score_column),
        ("--latency-column", &args.latency_column),
        ("--event-id-column", &args.event_id_column),
    ]
    .into_iter()
    .filter_map(|(flag, column)| column.clone().map(|column| (flag.to_string(), column)))
    .collect();
    let columns = offline::ColumnNames {
        label: args.label_column.unwrap_or(defaults.label),
        prediction: args.prediction_column.unwrap_or(defaults.prediction),
        score: args.score_column.unwrap_or(defaults.score),
        latency: args.latency_column.unwrap_or(defaults.latency),
        event_id: args.event_id_column.unwrap_or(defaults.event_id),
        required,
    };
    let old = match (args.old, args.old_baseline) {
        (_, Some(path)) => offline::OldSide::Baseline(path),
        (Some(path), None) => offline::OldSide::Rows(path),
        (None, None) => return Err(bad_input("--old FILE or --old-baseline FILE is required".to_string())),
    };
    let new = args.new.ok_or_else(|| bad_input("--new FILE is required".to_string()))?;
    let options = offline::OfflineOptions {
        old,
        new,
        requirements,
        columns,
        task,
        positive_class: args.positive_class,
        bootstrap: crate::gate::significance::BootstrapOptions { resamples: args.bootstrap_resamples, seed: args.seed },
    };
    let report = offline::run_offline(&options).map_err(|e| bad_input(e.to_string()))?;
    print_gate_report(&report, args.format, args.out.as_deref())
}

/// Prints (or writes to `out`) a gate report; the verdict goes to stderr
/// unless the table already shows it. Exit 0 pass, 1 fail.
fn print_gate_report(
    report: &crate::gate::GateReport,
    format: crate::gate::format::Format,
    out: Option<&std::path::Path>,
) -> Result<(), ExitCode> {
    let text = crate::gate::format::render(report, format);
    match out {
        Some(path) => std::fs::write(path, &text).map_err(|e| {
            eprintln!("driftwatch gate: --out {}: {e}", path.display());
            ExitCode::from(crate::gate::EXIT_BAD_INPUT)
        })?,
        None => {
            use std::io::Write as _;
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
    }
    if out.is_some() || format != crate::gate::format::Format::Table {
        let failed = report.failed_count();
        let total = report.requirements.len();
        if report.passed {
            eprintln!("driftwatch gate: PASS ({total} of {total} requirements hold)");
        } else if failed == 0 {
            eprintln!("driftwatch gate: FAIL (too little evidence; see the report's notes)");
        } else {
            eprintln!("driftwatch gate: FAIL ({failed} of {total} requirements failed)");
        }
    }
    if report.passed { Ok(()) } else { Err(ExitCode::from(report.exit_code())) }
}

fn baseline_command(command: BaselineCommand) -> Result<(), ExitCode> {
    let BaselineCommand::Build {
        input,
        model,
        version,
        out,
        config,
        label_column,
        prediction_column,
        score_column,
        features,
        exclude,
        categorical,
        bins,
        top_categories,
        task,
        dvc_md5,
        mlflow_run_id,
        quiet,
    } = command;
    let task = match task.as_deref() {
        None => None,
        Some("binary_classification") => Some(crate::config::Task::BinaryClassification),
        Some("multiclass_classification") => Some(crate::config::Task::MulticlassClassification),
        Some("regression") => Some(crate::config::Task::Regression),
        Some(other) => {
            eprintln!("--task {other}: use binary_classification, multiclass_classification or regression");
            return Err(ExitCode::from(2));
        }
    };
    if bins == 0 {
        eprintln!("--bins must be at least 1");
        return Err(ExitCode::from(2));
    }
    let defaults = crate::profiling::BuildOptions::new(input, &model);
    let required_columns = [
        ("--label-column", &label_column),
        ("--prediction-column", &prediction_column),
        ("--score-column", &score_column),
    ]
    .into_iter()
    .filter_map(|(flag, column)| column.clone().map(|column| (flag.to_string(), column)))
    .collect();
    let mut options = crate::profiling::BuildOptions {
        version,
        label_column: label_column.unwrap_or(defaults.label_column.clone()),
        prediction_column: prediction_column.unwrap_or(defaults.prediction_column.clone()),
        score_column: score_column.unwrap_or(defaults.score_column.clone()),
        required_columns,
        features,
        exclude,
        categorical,
        bins,
        top_categories,
        task,
        dvc_md5,
        mlflow_run_id,
        progress: !quiet,
        ..defaults
    };
    let fail = |e: crate::baseline::BaselineError| {
        eprintln!("driftwatch baseline build: {e}");
        ExitCode::from(1)
    };
    if let Some(path) = config {
        let config = Config::load(&path).map_err(|e| {
            eprintln!("driftwatch baseline build: {e}");
            ExitCode::from(1)
        })?;
        options.use_config(config).map_err(fail)?;
    }
    let baseline = crate::profiling::build_baseline(&options).map_err(fail)?;
    baseline.save(&out).map_err(fail)?;
    eprintln!(
        "baseline for {} from {} ({}) written to {}",
        baseline.model,
        count_of(baseline.source.rows as usize, "row", "rows"),
        count_of(baseline.features.len(), "feature", "features"),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand says what it is for in
    /// `--help` (regression: `driftwatch run --help` showed `--config`
    /// with no line).
    #[test]
    fn every_argument_of_every_subcommand_has_a_help_line() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for argument in command.get_arguments() {
                let id = argument.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if argument.get_help().is_none() && argument.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "driftwatch", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }
}
