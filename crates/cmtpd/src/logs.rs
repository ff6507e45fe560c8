//! Logs to stderr, `human` or `json`, with a level filter; both can be
//! changed while running (a reload applies `[log]`).

use cmtp_server::config::{LogConfig, LogFormat};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type FmtLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// Handles to change the running log configuration.
pub(crate) struct Logs {
    filter: reload::Handle<EnvFilter, Registry>,
    fmt: reload::Handle<FmtLayer, Filtered>,
    /// `--log-format` given on the command line wins over the file.
    forced: Option<LogFormat>,
    format: LogFormat,
}

/// `RUST_LOG` if set, else the configured level.
fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
}

fn layer(format: LogFormat) -> FmtLayer {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

impl Logs {
    /// Installs the global subscriber.
    pub(crate) fn init(cfg: &LogConfig, forced: Option<LogFormat>) -> anyhow::Result<Logs> {
        let format = forced.unwrap_or(cfg.format);
        let (filter_layer, filter_handle) = reload::Layer::new(filter(&cfg.level));
        let (fmt_layer, fmt_handle) = reload::Layer::new(layer(format));
        tracing_subscriber::registry()
            .with(filter_layer)
            .with(fmt_layer)
            .try_init()?;
        Ok(Logs {
            filter: filter_handle,
            fmt: fmt_handle,
            forced,
            format,
        })
    }

    /// Applies a reloaded `[log]` section.
    pub(crate) fn apply(&mut self, cfg: &LogConfig) -> anyhow::Result<()> {
        self.filter.reload(filter(&cfg.level))?;
        let format = self.forced.unwrap_or(cfg.format);
        if format != self.format {
            self.fmt.reload(layer(format))?;
            self.format = format;
        }
        Ok(())
    }
}
