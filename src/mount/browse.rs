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
    /// None only while dropping: closing the queue ends the thread.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    name: String,
}

impl Browser {
    /// Opens the filesystem `reader` reads on a new thread; `name` names it in errors. The
    /// thread ends when the browser is dropped, and the drop waits for it: the thread holds the
    /// repository's index, which must be closed before the process exits (RocksDB aborts when
    /// its last handle closes while the process tears down its static state).
    pub(super) fn open(reader: Arc<ImageReader>, name: String) -> Result<Browser> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = mpsc::channel();
        let image = name.clone();
        let thread = std::thread::Builder::new()
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
        let browser = Browser { jobs: Some(jobs), thread: Some(thread), name };
        opened.recv().map_err(|_| stopped(&browser.name))??;
        Ok(browser)
    }

    /// Runs `ask` on the filesystem's thread and returns its answer.
    pub(super) fn ask<T: Send + 'static>(&self, ask: impl FnOnce(&Files) -> Result<T> + Send + 'static) -> Result<T> {
        let (answer, answered) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |files| {
            let _ = answer.send(ask(files));
        });
        let jobs = self.jobs.as_ref().ok_or_else(|| stopped(&self.name))?;
        jobs.send(job).map_err(|_| stopped(&self.name))?;
        answered.recv().map_err(|_| stopped(&self.name))?
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            // A job that panicked ended the thread early; its panic was reported already.
            let _ = thread.join();
        }
    }
}

fn stopped(name: &str) -> Error {
    Error::Filesystem { image: name.into(), reason: "its reader thread stopped".into() }
}
