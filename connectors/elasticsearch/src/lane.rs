//! Document-id lanes: the tasks that send a batch's actions, in order per
//! document, while later batches are planned.
//!
//! An action goes to the lane its document hashes to, so one document's
//! changes are applied in order across every batch in flight and no lane
//! waits for another. Each lane takes its jobs one at a time, in arrival
//! order, and answers each job with its rejections once every action of it
//! is applied ([`retry`](crate::retry) says how it gets through). An empty
//! job is a barrier: its answer means everything queued before it is sent.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pgfanout_sdk::Rejected;
use tokio::sync::{mpsc, oneshot};

use crate::encode::{encoded_len, Encoded, JobBuilder};
use crate::error::EsError;
use crate::plan::Action;
use crate::retry::BulkWriter;

/// A lane's work: actions in order, and where to answer with rejections
/// once all are applied (an empty job is a barrier).
struct LaneJob {
    job: Encoded,
    done: oneshot::Sender<Vec<Rejected>>,
}

/// A lane's answer to come: the job's rejections.
pub(crate) type LaneAnswer = oneshot::Receiver<Vec<Rejected>>;

/// The lanes of a sink (their queues; the tasks stop when it is dropped).
pub(crate) struct Lanes {
    queues: Vec<mpsc::UnboundedSender<LaneJob>>,
}

impl Lanes {
    /// Starts `n` (at least one) lane tasks writing with `writer`.
    pub(crate) fn spawn(writer: BulkWriter, n: usize) -> Lanes {
        let writer = Arc::new(writer);
        let queues = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(pgfanout_sdk::health::inherit(run(writer.clone(), rx)));
                tx
            })
            .collect();
        Lanes { queues }
    }

    /// Hands actions (each tagged with its batch record) to their document
    /// lanes, encoded; the answers to come go to `done`.
    pub(crate) fn dispatch(&self, actions: Vec<(usize, Action)>, done: &mut Vec<LaneAnswer>) {
        let n = self.queues.len();
        let lanes: Vec<usize> = actions
            .iter()
            .map(|(_, a)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                a.doc().hash(&mut h);
                (h.finish() % n as u64) as usize
            })
            .collect();
        // Each lane's body allocated once, at its size.
        let mut sizes = vec![0usize; n];
        for ((_, a), &lane) in actions.iter().zip(&lanes) {
            sizes[lane] += encoded_len(a);
        }
        let mut jobs: Vec<JobBuilder> = sizes.into_iter().map(JobBuilder::with_capacity).collect();
        for ((record, a), lane) in actions.into_iter().zip(lanes) {
            jobs[lane].push(record, a);
        }
        for (queue, job) in self.queues.iter().zip(jobs) {
            if !job.is_empty() {
                done.push(send(queue, job.finish()));
            }
        }
    }

    /// Waits until every lane has sent everything dispatched so far.
    pub(crate) async fn drain(&self) -> Result<(), EsError> {
        let barriers: Vec<LaneAnswer> = self.queues.iter().map(|queue| send(queue, Encoded::default())).collect();
        for rx in barriers {
            answer(rx).await?;
        }
        Ok(())
    }
}

/// Queues `job` on a lane. A closed lane leaves the receiver without an
/// answer: the batch fails as retriable.
fn send(queue: &mpsc::UnboundedSender<LaneJob>, job: Encoded) -> LaneAnswer {
    let (tx, rx) = oneshot::channel();
    let _ = queue.send(LaneJob { job, done: tx });
    rx
}

/// A lane's answer to a job: its rejections (a lane that stopped never
/// answers: retriable).
pub(crate) async fn answer(rx: LaneAnswer) -> Result<Vec<Rejected>, EsError> {
    rx.await.map_err(|_| EsError::LaneStopped)
}

/// A lane task: its jobs in arrival order, each until it goes through.
async fn run(writer: Arc<BulkWriter>, mut jobs: mpsc::UnboundedReceiver<LaneJob>) {
    while let Some(LaneJob { job, done }) = jobs.recv().await {
        let rejected = writer.write_until_through(&job).await;
        let _ = done.send(rejected);
    }
}
