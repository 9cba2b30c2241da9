//! OpenTelemetry push over OTLP/HTTP (protobuf bodies), configured by the
//! `otlp:` section: a periodic metric reader beside the Prometheus one (the
//! same instruments, pushed every `otlp.interval`), and optionally a span
//! exporter for the `tracing` spans of the window close → rules → notify
//! path.
//!
//! The exporters run on the OpenTelemetry SDK's own threads; their HTTP
//! requests go through [`OtlpHttpClient`], which hands each request to a
//! one-thread tokio runtime of its own and so works from any thread. The
//! client is the same reqwest (native-tls) the notifiers use: no second
//! HTTP or TLS stack.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::config::OtlpConfig;

/// Sends OTLP requests with reqwest on a runtime of its own.
#[derive(Clone)]
pub struct OtlpHttpClient {
    runtime: Arc<tokio::runtime::Runtime>,
    client: reqwest::Client,
}

impl std::fmt::Debug for OtlpHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpHttpClient")
    }
}

impl OtlpHttpClient {
    pub fn new(timeout: Duration) -> Result<OtlpHttpClient, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("driftwatch-otlp")
            .enable_all()
            .build()
            .map_err(|e| format!("otlp: starting its runtime: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("otlp: building the HTTP client: {e}"))?;
        Ok(OtlpHttpClient { runtime: Arc::new(runtime), client })
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // The exporter may log a failed reply: keep our header values (API
        // keys) out of it even when the collector echoes them back.
        let secrets: Vec<String> = request
            .headers()
            .iter()
            .filter(|(name, _)| *name != http::header::CONTENT_TYPE && *name != http::header::CONTENT_LENGTH)
            .filter_map(|(_, value)| value.to_str().ok().map(str::to_string))
            .collect();
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let response = client.execute(request).await.map_err(reqwest::Error::without_url)?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut body = response.bytes().await.map_err(reqwest::Error::without_url)?;
            if !status.is_success() {
                let text = crate::config::redact::scrub(&String::from_utf8_lossy(&body), &secrets);
                body = Bytes::from(text);
            }
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = task.await??;
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

fn headers(config: &OtlpConfig) -> std::collections::HashMap<String, String> {
    config.headers.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect()
}

fn resource(config: &OtlpConfig) -> Resource {
    Resource::builder().with_service_name(config.service_name.clone()).build()
}

/// The periodic reader that pushes metrics, when `otlp.metrics` is on.
pub fn metric_reader(
    config: &OtlpConfig,
) -> Result<Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>, String> {
    if !config.metrics {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(OtlpHttpClient::new(config.timeout)?)
        .with_endpoint(format!("{}/v1/metrics", config.endpoint.trim_end_matches('/')))
        .with_timeout(config.timeout)
        .with_headers(headers(config))
        .build()
        .map_err(|e| format!("otlp: metric exporter: {e}"))?;
    Ok(Some(PeriodicReader::builder(exporter).with_interval(config.interval).build()))
}

/// The resource pushed metrics carry.
pub fn metric_resource(config: &OtlpConfig) -> Resource {
    resource(config)
}

/// Span export, when `otlp.traces` is on. Keep the returned provider alive
/// for as long as spans should be exported; dropping it flushes them.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    pub fn start(config: &OtlpConfig) -> Result<Option<Tracing>, String> {
        if !config.traces {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpHttpClient::new(config.timeout)?)
            .with_endpoint(format!("{}/v1/traces", config.endpoint.trim_end_matches('/')))
            .with_timeout(config.timeout)
            .with_headers(headers(config))
            .build()
            .map_err(|e| format!("otlp: span exporter: {e}"))?;
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource(config)).build();
        Ok(Some(Tracing { provider }))
    }

    /// A `tracing` layer that exports spans through this provider.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("driftwatch"))
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "flushing spans at shutdown failed");
        }
    }
}
