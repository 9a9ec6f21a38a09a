//! `envrig cp` on Docker: files into and out of a container through the engine's archive
//! API, streamed from and to a tar file on the host (no exec, no `tar` in the image).

use std::path::Path;

use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use envrig_provider_api::Result;
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::DockerProvider;
use crate::error::{engine_err, map_err};

impl DockerProvider {
    pub(crate) async fn copy_tar_in(&self, id: &str, tar: &Path, dest: &str) -> Result<()> {
        let file = tokio::fs::File::open(tar)
            .await
            .map_err(|e| engine_err(format!("open {}", tar.display()), e))?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map_ok(Into::into);
        let options = UploadToContainerOptions {
            path: dest.to_string(),
            ..UploadToContainerOptions::default()
        };
        self.docker
            .upload_to_container(id, Some(options), bollard::body_try_stream(body))
            .await
            .map_err(|e| map_err(format!("copy into {id}:{dest}"), e))
    }

    pub(crate) async fn copy_tar_out(&self, id: &str, src: &str, tar: &Path) -> Result<()> {
        let options = DownloadFromContainerOptions {
            path: src.to_string(),
        };
        let mut stream = self.docker.download_from_container(id, Some(options));
        let io = |e: std::io::Error| engine_err(format!("write {}", tar.display()), e);
        let mut file = tokio::fs::File::create(tar).await.map_err(io)?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| map_err(format!("copy {id}:{src}"), e))?;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)
    }
}
