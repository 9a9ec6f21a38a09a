//! `envrig logs` on Docker: the container's output as the engine keeps it.

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use envrig_provider_api::{LogRequest, OutputSink, OutputStream, Result};
use futures_util::StreamExt;

use crate::DockerProvider;
use crate::error::map_err;

impl DockerProvider {
    pub(crate) async fn container_logs(
        &self,
        id: &str,
        req: &LogRequest,
        output: OutputSink<'_>,
    ) -> Result<()> {
        let options = LogsOptions {
            follow: req.follow,
            stdout: true,
            stderr: true,
            since: req
                .since
                .map_or(0, |s| i32::try_from(s.max(0)).unwrap_or(i32::MAX)),
            tail: req
                .tail
                .map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..LogsOptions::default()
        };
        let mut stream = self.docker.logs(id, Some(options));
        while let Some(chunk) = stream.next().await {
            match chunk.map_err(|e| map_err(format!("read the logs of {id}"), e))? {
                LogOutput::StdErr { message } => output(OutputStream::Stderr, &message),
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    output(OutputStream::Stdout, &message)
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        Ok(())
    }
}
