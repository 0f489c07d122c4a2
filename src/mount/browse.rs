//! The file view of the mount (`files/`, `p<N>.files/`): each opened filesystem lives on a
//! thread of its own, because the ext2/3/4 reader (`ext4-view`) is neither `Send` nor `Sync`;
//! the FUSE threads send it questions and wait for the answers. One filesystem answers one
//! question at a time.

use std::sync::mpsc;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::files::Files;
use crate::reader::ImageReader;

type Job = Box<dyn FnOnce(&Files) + Send>;

pub(super) struct Browser {
    jobs: mpsc::Sender<Job>,
    name: String,
}

impl Browser {
    /// Opens the filesystem `reader` reads on a new thread; `name` names it in errors. The
    /// thread ends when the browser is dropped.
    pub(super) fn open(reader: Arc<ImageReader>, name: String) -> Result<Browser> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = mpsc::channel();
        let image = name.clone();
        std::thread::Builder::new()
            .name(format!("strata-files-{name}"))
            .spawn(move || match Files::open(reader, &image) {
                Ok(files) => {
                    let _ = ready.send(Ok(()));
                    for job in queue {
                        job(&files);
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| Error::io("start a thread for", name.as_str(), e))?;
        opened.recv().map_err(|_| stopped(&name))??;
        Ok(Browser { jobs, name })
    }

    /// Runs `ask` on the filesystem's thread and returns its answer.
    pub(super) fn ask<T: Send + 'static>(&self, ask: impl FnOnce(&Files) -> Result<T> + Send + 'static) -> Result<T> {
        let (answer, answered) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |files| {
            let _ = answer.send(ask(files));
        });
        self.jobs.send(job).map_err(|_| stopped(&self.name))?;
        answered.recv().map_err(|_| stopped(&self.name))?
    }
}

fn stopped(name: &str) -> Error {
    Error::Filesystem { image: name.into(), reason: "its reader thread stopped".into() }
}
