//! Commands and files inside a machine: exec with its output streamed, exec on a terminal,
//! uploads, and small files read through the archive API.

use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::UploadToContainerOptions;
use envrig_provider_api::{ExecRequest, OutputSink, OutputStream, ProviderError, Result, Terminal};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::DockerProvider;
use crate::error::{engine_err, map_err};

impl DockerProvider {
    /// A small file inside the container, through the archive API (no exec); `None` when
    /// it is not there.
    pub(crate) async fn archive_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let options = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let mut stream = self.docker.download_from_container(id, Some(options));
        let mut tar_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => tar_bytes.extend_from_slice(&b),
                Err(e) => {
                    return match map_err(format!("read {path} in {id}"), e) {
                        ProviderError::NotFound { .. } => Ok(None),
                        other => Err(other),
                    };
                }
            }
        }
        let io = |e: std::io::Error| engine_err(format!("read {path} in {id}"), e);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        for entry in archive.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            if entry.header().entry_type().is_file() {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(io)?;
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    pub(crate) async fn exec_streamed(
        &self,
        id: &str,
        req: &ExecRequest,
        output: OutputSink<'_>,
    ) -> Result<i64> {
        let options = CreateExecOptions {
            cmd: Some(req.argv.clone()),
            env: exec_env(req),
            user: req.user.clone(),
            working_dir: req.workdir.clone(),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..CreateExecOptions::default()
        };
        // A commit pauses its container while it copies: one that a killed envrig sent
        // (a snapshot, an export) can land after the next envrig looked. Such a pause ends
        // with the commit: waited for, bounded (10 s).
        let mut tries = 0;
        let exec = loop {
            match self.docker.create_exec(id, options.clone()).await {
                Ok(e) => break e,
                Err(e) => {
                    let e = map_err(format!("create exec in {id}"), e);
                    tries += 1;
                    if tries >= 100 || !e.to_string().contains("is paused") {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let started = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(|e| map_err(format!("start exec in {id}"), e))?;
        if let StartExecResults::Attached {
            output: mut out, ..
        } = started
        {
            while let Some(chunk) = out.next().await {
                use bollard::container::LogOutput;
                match chunk.map_err(|e| map_err(format!("read exec output in {id}"), e))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        output(OutputStream::Stdout, &message)
                    }
                    LogOutput::StdErr { message } => output(OutputStream::Stderr, &message),
                    LogOutput::StdIn { .. } => {}
                }
            }
        }
        exit_code(&self.docker, &exec.id).await
    }

    pub(crate) async fn exec_terminal(
        &self,
        id: &str,
        req: &ExecRequest,
        terminal: Terminal,
    ) -> Result<i64> {
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(req.argv.clone()),
                    env: exec_env(req),
                    user: req.user.clone(),
                    working_dir: req.workdir.clone(),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(true),
                    ..CreateExecOptions::default()
                },
            )
            .await
            .map_err(|e| map_err(format!("create exec in {id}"), e))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    tty: true,
                    ..StartExecOptions::default()
                }),
            )
            .await
            .map_err(|e| map_err(format!("start exec in {id}"), e))?;
        let StartExecResults::Attached {
            output: mut out,
            mut input,
        } = started
        else {
            return exit_code(&self.docker, &exec.id).await;
        };
        if let Some((width, height)) = terminal.size {
            // Best effort: a shell works at the default size too.
            let _ = self
                .docker
                .resize_exec(&exec.id, ResizeExecOptions { height, width })
                .await;
        }
        let Terminal {
            input: mut stdin,
            output: mut stdout,
            ..
        } = terminal;
        let pump = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
            let _ = input.shutdown().await;
        });
        while let Some(chunk) = out.next().await {
            let Ok(chunk) = chunk else { break };
            if stdout.write_all(&chunk.into_bytes()).await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
        pump.abort();
        exit_code(&self.docker, &exec.id).await
    }

    pub(crate) async fn upload_tar(&self, id: &str, dest: &str, tar: Vec<u8>) -> Result<()> {
        let options = UploadToContainerOptions {
            path: dest.to_string(),
            ..UploadToContainerOptions::default()
        };
        self.docker
            .upload_to_container(id, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|e| map_err(format!("upload to {id}:{dest}"), e))
    }
}

fn exec_env(req: &ExecRequest) -> Option<Vec<String>> {
    (!req.env.is_empty()).then(|| req.env.iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// The exit code of a finished exec. The output stream ends when the process does, but the
/// engine may record the code a moment later, so poll briefly (bounded).
async fn exit_code(docker: &Docker, exec_id: &str) -> Result<i64> {
    for _ in 0..200 {
        let info = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| map_err("inspect exec", e))?;
        if info.running != Some(true) {
            return Ok(info.exit_code.unwrap_or(-1));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ProviderError::Conflict {
        message: "the command's output ended but it did not exit within 2 s".to_string(),
    })
}
