//! The shipper's event loop: one task per host that scans the sandboxes, runs
//! reading rounds over every followed file, fills and hands over batches, keeps at
//! most one in flight, spills to the spool when the indexer fails (or is slow while a
//! task's budget is pressed, or slow for long), and saves the
//! checkpoints once the indexer acknowledged.
//!
//! One `select!` over file events, the batch in flight, the checkpoint save and a
//! timer, rather than a task per file: every decision (what to read next, when to
//! send, when a rotated file may go) is made in one place with the whole picture,
//! at the price of a long loop that must never block (file reads run on the blocking
//! pool).

use super::*;

/// How long a full batch waits for the batch in flight before it goes to the spool,
/// once an attempt of that batch failed or a task's logs press its budget.
const SPILL_AFTER: Duration = Duration::from_millis(500);
/// How long a full batch waits for an indexer that answers, only slowly (a burst on
/// a busy machine), before it goes to the spool all the same (see
/// [`Run::wait_before_spilling`]). Far under the request timeout, so that a hung
/// indexer is spilled to long before its request fails.
const SPILL_WHEN_BUSY: Duration = Duration::from_secs(10);
/// Full batches kept in memory behind the one in flight. Batches go one at a time
/// (see [`ship`]); without a few queued, reading stopped for every round trip (the
/// indexer decompressing and committing the batch in flight), which left the
/// shipper's core idle a third of the time at full speed (BENCHMARKS.md).
const MAX_QUEUED: usize = 2;
/// Least time between two reading rounds started by file events. Every write of
/// every task is an event and a round reads every followed file: 50 tasks writing a
/// line each 10 ms made thousands of rounds a second, most of a core (BENCHMARKS.md,
/// issue 14's `50slow`). At most one round per this much time reads them all at
/// once; a line waits this much longer at most, against the batch's 200 ms. A round
/// that stopped because there was more to read does not wait.
const WAKE_COALESCE: Duration = Duration::from_millis(25);

/// What `select!` in the main loop woke up for.
enum Event {
    Cancelled,
    Wake(bool),
    Shipped(std::result::Result<Shipped, tokio::task::JoinError>),
    Saved(std::result::Result<Result<Vec<String>>, tokio::task::JoinError>),
    Timer,
}

/// The state of one `Shipper::run`: owned by a single task, so no locks.
pub(crate) struct Run {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    checkpoint_path: PathBuf,
    /// Acknowledged positions; only `on_shipped` moves them.
    checkpoints: Checkpoints,
    /// A checkpoint change that no save has started writing yet (or whose save failed).
    dirty: bool,
    /// The acknowledgement save running on the blocking pool, if any: it returns the
    /// sources it pruned. One at a time, so saves land on disk in order.
    saving: Option<JoinHandle<Result<Vec<String>>>>,
    /// `None` only while a scan runs on the blocking pool.
    discovery: Option<Discovery>,
    /// Followed files by source id.
    files: BTreeMap<String, Tailed>,
    /// Released files whose entry goes once everything up to their end is acked
    /// (logger rotations: after the file itself).
    releasing: Vec<Released>,
    /// Rotated files that could not be deleted, warned about once.
    undeletable: HashSet<Arc<str>>,
    /// Sandbox files refused at the last scan (symlinks, not regular files), warned
    /// about and counted once while they stay so.
    refused: HashSet<PathBuf>,
    /// File events from the watcher, if it could be set up.
    wakes: Option<discover::Wakes>,
    /// When the last reading round started (see [`WAKE_COALESCE`]).
    last_round: Instant,
    next_start: usize,
    round: RoundConfig,
    batch: Batch,
    in_flight: Option<JoinHandle<Shipped>>,
    /// The spool segment the batch in flight is stored as, if it is.
    in_flight_seg: Option<u64>,
    /// A copy of the batch in flight when it went straight from memory, so it can be
    /// spilled to the spool ahead of the batches that queue up behind it.
    in_flight_copy: Option<Arc<Batch>>,
    /// Full batches from memory waiting for the one in flight, oldest first. Only
    /// while the spool is empty: spilling takes them along, in order.
    queued: std::collections::VecDeque<Arc<Batch>>,
    /// `None` only while a spool operation runs on the blocking pool.
    spool: Option<spool::Spool>,
    /// Since when each file has had unacknowledged bytes (lag in seconds).
    behind_since: BTreeMap<String, Instant>,
    /// `batches_failed` when the batch in flight was sent: a higher count now means
    /// one of its attempts failed (the indexer is down or refusing), not just slow.
    failed_at_send: u64,
    /// At the last scan, what some task's logs would keep on disk (live files and
    /// rotations not yet read) filled half its disk budget (see [`budget::pressed`]).
    budget_pressed: bool,
    /// Every batch handed over so far was delivered completely. Once one was not
    /// (only on cancellation), later batches must not be sent: the indexer would
    /// commit their higher offsets and then skip the undelivered ones as duplicates.
    intact: bool,
}

impl Run {
    pub(crate) async fn start(inner: Arc<Inner>, cancel: CancellationToken) -> Result<Run> {
        let cfg = &inner.config;
        let state_dir = cfg.work_dir.join("shipper");
        tokio::fs::create_dir_all(&state_dir)
            .await
            .map_err(|e| Error::io(&state_dir, e))?;
        let checkpoint_path = state_dir.join("checkpoints.json");
        let path = checkpoint_path.clone();
        let checkpoints = tokio::task::spawn_blocking(move || load_checkpoints(&path)).await??;
        let spool_dir = state_dir.join("spool");
        let max = cfg.spool_max_bytes;
        let spool =
            tokio::task::spawn_blocking(move || spool::Spool::open(spool_dir, max)).await??;
        info!(
            host = %cfg.host,
            work_dir = %cfg.work_dir.display(),
            sources = checkpoints.files.len(),
            "shipper starting"
        );
        Ok(Run {
            round: RoundConfig {
                host: cfg.host.clone(),
                max_line_bytes: cfg.max_line_bytes,
                // Half a batch of text encodes to about one batch, so a round's records
                // usually become the next batch without a copy, and read-ahead stays
                // bounded when delivery stalls.
                budget: (cfg.batch_max_bytes / 2).max(tail::CHUNK_BYTES),
                release_after: cfg.release_after,
                multiline_flush: cfg.multiline_flush,
            },
            discovery: Some(Discovery::new(cfg.host.clone(), cfg.work_dir.clone())),
            inner: inner.clone(),
            cancel,
            checkpoint_path,
            checkpoints,
            dirty: false,
            saving: None,
            files: BTreeMap::new(),
            releasing: Vec::new(),
            undeletable: HashSet::new(),
            refused: HashSet::new(),
            wakes: None,
            last_round: Instant::now(),
            next_start: 0,
            batch: Batch::default(),
            in_flight: None,
            in_flight_seg: None,
            in_flight_copy: None,
            queued: std::collections::VecDeque::new(),
            spool: Some(spool),
            behind_since: BTreeMap::new(),
            failed_at_send: 0,
            budget_pressed: false,
            intact: true,
        })
    }

    pub(crate) async fn run(mut self) -> Result<()> {
        let cfg = self.inner.config.clone();
        let _watcher = match discover::watch(&cfg.work_dir, cfg.work_dir.join("shipper")) {
            Some((w, rx)) => {
                self.wakes = Some(rx);
                Some(w)
            }
            None => None,
        };
        let mut rescan = true;
        // The last round stopped with more to read: read again at once.
        let mut more = true;
        let mut refill = false;
        let mut next_scan = Instant::now();
        self.update_spool_metrics();
        // What an earlier run spooled goes before anything new.
        self.start_next().await?;
        while !self.cancel.is_cancelled() {
            if rescan || Instant::now() >= next_scan {
                self.scan().await?;
                rescan = false;
                more = true;
                next_scan = Instant::now() + cfg.scan_interval;
            }
            if self.files.values().any(|t| !t.registered) {
                self.register().await;
            }
            self.save_soon().await;
            // Rounds are at least WAKE_COALESCE apart unless the last one left more
            // to read or a send just ended (the reader refills the queue at once: a
            // busy task's lines must not wait on this).
            let due = self.last_round + WAKE_COALESCE;
            more = if more || refill || Instant::now() >= due {
                self.read().await?
            } else {
                false
            };
            if self.cancel.is_cancelled() {
                break;
            }
            self.reap_finished().await?;
            if self.in_flight.is_none()
                && self
                    .batch
                    .started()
                    .is_some_and(|s| s.elapsed() >= cfg.batch_max_wait)
            {
                self.hand_over().await?;
            }
            self.update_lag();
            if more {
                continue;
            }
            // A deadline already passed while the round was held back must not spin.
            let deadline = self.next_deadline(next_scan).max(due);
            refill = false;
            match self.wait(deadline).await {
                Event::Cancelled | Event::Timer => {}
                Event::Wake(r) => rescan |= r,
                Event::Shipped(shipped) => {
                    refill = true;
                    self.in_flight = None;
                    self.on_shipped(shipped?).await;
                    self.start_next().await?;
                }
                Event::Saved(saved) => {
                    self.saving = None;
                    self.saved(saved);
                    self.save_soon().await;
                }
            }
        }
        self.shutdown().await
    }

    async fn wait(&mut self, deadline: Instant) -> Event {
        // File events are taken no sooner than WAKE_COALESCE after the last round;
        // everything else (a send ending, a save, the timer) is not held back.
        let wakes_from = self.last_round + WAKE_COALESCE;
        let Run {
            in_flight,
            saving,
            wakes,
            cancel,
            ..
        } = self;
        tokio::select! {
            _ = cancel.cancelled() => Event::Cancelled,
            w = async {
                tokio::time::sleep_until(wakes_from.into()).await;
                next_wake(wakes).await
            } => match w {
                Some(rescan) => Event::Wake(rescan),
                None => {
                    *wakes = None;
                    Event::Timer
                }
            },
            r = async {
                match in_flight.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => Event::Shipped(r),
            r = async {
                match saving.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => Event::Saved(r),
            _ = tokio::time::sleep_until(deadline.into()) => Event::Timer,
        }
    }

    /// The next moment something is due without any file event: a rescan, a batch
    /// reaching its age, an unfinished line reaching its flush timeout.
    fn next_deadline(&self, next_scan: Instant) -> Instant {
        let mut deadline = next_scan;
        if self.in_flight.is_none() {
            if let Some(s) = self.batch.started() {
                deadline = deadline.min(s + self.inner.config.batch_max_wait);
            }
        }
        for t in self.files.values() {
            if let Some(d) = t.partial_deadline() {
                deadline = deadline.min(d);
            }
            if let Some(d) = t.release_deadline(self.inner.config.release_after) {
                deadline = deadline.min(d);
            }
            if let Some(d) = t.event_deadline(self.inner.config.multiline_flush) {
                deadline = deadline.min(d);
            }
        }
        deadline
    }

    /// Finds files (new ones, rotations), resolves them against the checkpoints,
    /// registers the new ones, and enforces the sandboxes' disk budgets.
    async fn scan(&mut self) -> Result<()> {
        let mut discovery = self
            .discovery
            .take()
            .expect("discovery is back after every scan");
        let (discovery, found) = tokio::task::spawn_blocking(move || {
            let found = discovery.scan();
            (discovery, found)
        })
        .await?;
        self.discovery = Some(discovery);
        let entries = self.checkpoints.files.clone();
        // Released files waiting to be deleted are still on disk: never followed
        // again.
        let tailed: Vec<FileId> = self
            .files
            .values()
            .map(|t| t.id)
            .chain(self.releasing.iter().map(|r| r.id))
            .collect();
        let busy: HashSet<String> = self
            .files
            .keys()
            .cloned()
            .chain(self.releasing.iter().map(|r| r.source.to_string()))
            .collect();
        let files = found.files;
        let resolved = tokio::task::spawn_blocking(move || {
            tail::resolve(files, &entries, &tailed, &busy, Instant::now())
        })
        .await?;
        for src in resolved.forget {
            debug!(source = %src, "no file left for this checkpoint, forgetting it");
            self.dirty |= self.checkpoints.remove(&src);
        }
        for (id, path, n) in resolved.rotated {
            if let Some(t) = self.files.values_mut().find(|t| t.id.same(&id)) {
                if t.rotation.is_none() {
                    debug!(source = %t.source, path = %path.display(), "followed file is now a logger rotation");
                    t.rotation = Some((path, n));
                }
            } else if let Some(r) = self.releasing.iter_mut().find(|r| r.id.same(&id)) {
                r.rotation.get_or_insert(path);
            }
        }
        self.note_refused(found.refused.into_iter().chain(resolved.refused));
        for t in resolved.tails {
            info!(source = %t.source, path = %t.path.display(), offset = t.pos, registered = t.registered, detached = t.detached.is_some(), rotation = ?t.rotation.as_ref().map(|r| r.1), "tailing file");
            self.files.insert(t.source.to_string(), t);
        }
        if self.files.values().any(|t| !t.registered) {
            self.register().await;
        }
        self.enforce_budgets(&found.sandboxes);
        Ok(())
    }

    /// Warns about and counts each newly refused file once; one no longer refused
    /// is forgotten, so a task that plants a symlink again is counted again.
    fn note_refused(&mut self, now: impl Iterator<Item = PathBuf>) {
        let now: HashSet<PathBuf> = now.collect();
        for path in now.difference(&self.refused) {
            warn!(path = %path.display(), "not reading a sandbox file that is a symlink, not a regular file or not the node's");
            inc(&self.inner.metrics.files_refused, 1);
        }
        self.refused = now;
    }

    /// Marks the rotated files each sandbox's disk budget gives up on (see
    /// [`budget`]); the next read round drops their unread bytes. Also refreshes the
    /// on-disk gauge.
    fn enforce_budgets(&mut self, sandboxes: &[SandboxLogs]) {
        let by_id: HashMap<FileId, &String> = self.files.iter().map(|(k, t)| (t.id, k)).collect();
        let (mut on_disk, mut budgets) = (0u64, 0u64);
        let mut marks = Vec::new();
        let mut pressed = false;
        for sb in sandboxes {
            on_disk = sb
                .files
                .iter()
                .fold(on_disk, |n, f| n.saturating_add(f.size));
            let Some(limit) = sb.budget else {
                continue;
            };
            budgets = budgets.saturating_add(limit);
            let states: Vec<budget::FileState> = sb
                .files
                .iter()
                .map(|f| {
                    let unread = match by_id.get(&f.id).map(|k| &self.files[*k]) {
                        Some(t) if t.drop.is_some() => 0,
                        Some(t) => f.size.saturating_sub(t.pos),
                        None if self.releasing.iter().any(|r| r.id.same(&f.id)) => 0,
                        None => f.size,
                    };
                    budget::FileState {
                        stream: f.stream,
                        rotation: f.rotation,
                        size: f.size,
                        unread,
                        modified: f.modified,
                    }
                })
                .collect();
            pressed |= budget::pressed(&states, limit);
            for i in budget::to_drop(&states, limit) {
                if let Some(k) = by_id.get(&sb.files[i].id) {
                    marks.push(((*k).clone(), limit, sb.files[i].path.clone()));
                }
            }
        }
        self.budget_pressed = pressed;
        for (key, limit, path) in marks {
            if let Some(t) = self.files.get_mut(&key) {
                if t.rotation.is_some() && t.drop.is_none() {
                    info!(source = %t.source, path = %path.display(), budget = limit, "disk budget of the task reached, dropping what is unread of its oldest rotated file");
                    t.drop = Some(limit);
                }
            }
        }
        let m = &self.inner.metrics;
        m.log_bytes_on_disk.store(on_disk, Ordering::Relaxed);
        m.log_budget_bytes.store(budgets, Ordering::Relaxed);
    }

    /// Writes the entries of newly found or restarted files to disk before anything
    /// of them is read (see [`fingerprint`]). On failure they stay unread and are
    /// tried again on the next loop.
    async fn register(&mut self) {
        let mut new = Vec::new();
        for t in self.files.values() {
            if !t.registered {
                let home = t.path.as_ref().clone();
                self.checkpoints.register(&t.source, t.entry(&home));
                new.push(t.source.clone());
            }
        }
        if new.is_empty() {
            return;
        }
        self.dirty = true;
        match self.save_checkpoints().await {
            Ok(()) => {
                for src in new {
                    if let Some(t) = self.files.get_mut(src.as_ref()) {
                        t.registered = true;
                    }
                }
            }
            Err(e) => {
                inc(&self.inner.metrics.checkpoint_errors, 1);
                error!(path = %self.checkpoint_path.display(), error = %e, "cannot register new files in the checkpoints, will retry");
            }
        }
    }

    /// One read round on the blocking pool; records go into the batch, full batches
    /// are handed over (waiting for the one in flight: that is the back-pressure).
    /// Returns whether there is more to read right away.
    async fn read(&mut self) -> Result<bool> {
        self.last_round = Instant::now();
        inc(&self.inner.metrics.read_rounds, 1);
        let mut files = std::mem::take(&mut self.files);
        let start = self.next_start;
        let cfg = self.round.clone();
        let metrics = self.inner.metrics.clone();
        let (files, round) = tokio::task::spawn_blocking(move || {
            let round = tail::read_round(&mut files, start, &cfg, &metrics);
            (files, round)
        })
        .await?;
        self.files = files;
        self.next_start = round.next_start;
        if !round.released.is_empty() {
            self.releasing.extend(round.released);
            self.dirty |= self.settle_released().await;
        }
        if round.unregistered {
            self.register().await;
        }
        let (recs, max) = (round.records, self.inner.config.batch_max_bytes);
        if self.batch.is_empty() && recs.bytes() < max + max / 2 {
            // The round's records become the batch as they are: no copy. A round
            // reads about half a batch of text, which encodes to about a batch.
            self.batch = recs;
            if self.batch.bytes() >= max {
                self.hand_over().await?;
            }
            return Ok(round.more);
        }
        self.batch.reserve(max + 64 * 1024);
        let mut lo = 0;
        while lo < recs.len() {
            let hi = recs.fill_to(lo, max.saturating_sub(self.batch.bytes()));
            self.batch.append(&recs, lo, hi);
            lo = hi;
            if self.batch.bytes() >= max {
                self.hand_over().await?;
                if self.cancel.is_cancelled() {
                    // Whatever is left is re-read from the checkpoints next time.
                    break;
                }
            }
        }
        Ok(round.more)
    }

    async fn reap_finished(&mut self) -> Result<()> {
        if self.in_flight.as_ref().is_some_and(|h| h.is_finished()) {
            let h = self.in_flight.take().expect("checked above");
            let shipped = h.await?;
            self.on_shipped(shipped).await;
            self.start_next().await?;
        }
        Ok(())
    }

    fn spool(&self) -> &spool::Spool {
        self.spool
            .as_ref()
            .expect("spool is back after every operation")
    }

    /// Runs `f` on the spool on the blocking pool.
    async fn spool_op<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut spool::Spool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut sp = self
            .spool
            .take()
            .expect("spool is back after every operation");
        let (sp, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut sp);
            (sp, r)
        })
        .await?;
        self.spool = Some(sp);
        self.update_spool_metrics();
        r
    }

    fn update_spool_metrics(&self) {
        let m = &self.inner.metrics;
        m.spool_bytes
            .store(self.spool().bytes(), std::sync::atomic::Ordering::Relaxed);
        m.spool_batches.store(
            self.spool().len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The current batch, replaced by an empty one (which usually becomes the next
    /// round's records, see `read`).
    fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }

    /// Compresses the current batch (see [`Batch::wire`]) and queues it behind the
    /// one in flight. The reader waits for the compression on purpose: on one core,
    /// compressing on another thread while reading only split the core between the
    /// two, the batch was not ready when its turn came, its round trip grew by the
    /// rest of its compression, the queue filled and the core idled through the
    /// indexer's part of every round trip (BENCHMARKS.md). Done in turn, the send
    /// cycle is just the round trip, shorter than reading a batch. If the batch is
    /// spilled instead, the compression is wasted: only while the indexer is slow.
    async fn enqueue(&mut self) -> Result<()> {
        // Regression (see `hand_over`): an emptied batch was queued as a no-op send.
        debug_assert!(!self.batch.is_empty(), "an empty batch was queued");
        let batch = Arc::new(self.take_batch());
        let (b, codec) = (batch.clone(), self.inner.sender.codec());
        tokio::task::spawn_blocking(move || b.wire(codec)).await?;
        self.queued.push_back(batch);
        Ok(())
    }

    fn send(&mut self, batch: Arc<Batch>, seg: Option<u64>) {
        // Regression: this was a deep copy of every batch (a memcpy of its body per
        // batch at full speed); the copy is only read if the batch must be spilled.
        self.in_flight_copy = (seg.is_none() && self.spool().enabled()).then(|| batch.clone());
        self.in_flight_seg = seg;
        self.failed_at_send = self.inner.metrics.batches_failed.load(Ordering::Relaxed);
        let sender = self.inner.sender.clone();
        let cancel = self.cancel.clone();
        self.in_flight = Some(tokio::spawn(
            async move { sender.ship(batch, &cancel).await },
        ));
    }

    /// Starts sending the oldest spooled batch, or a full batch from memory when
    /// the spool is empty, unless something is in flight.
    async fn start_next(&mut self) -> Result<()> {
        if self.in_flight.is_some() || !self.intact || self.cancel.is_cancelled() {
            return Ok(());
        }
        if !self.spool().is_empty() {
            match self.spool_op(|s| s.oldest()).await {
                Ok(Some((id, batch))) => self.send(Arc::new(batch), Some(id)),
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, "cannot read the oldest spooled batch, will retry")
                }
            }
            return Ok(());
        }
        if self.start_queued() {
            return Ok(());
        }
        if self.batch.bytes() >= self.inner.config.batch_max_bytes {
            self.save_heads().await;
            let batch = self.take_batch();
            self.send(Arc::new(batch), None);
        }
        Ok(())
    }

    /// Sends the oldest queued batch unless something is in flight or older batches
    /// wait in the spool; returns whether it did.
    fn start_queued(&mut self) -> bool {
        if self.in_flight.is_some()
            || !self.intact
            || self.cancel.is_cancelled()
            || !self.spool().is_empty()
        {
            return false;
        }
        match self.queued.pop_front() {
            Some(batch) => {
                self.send(batch, None);
                true
            }
            None => false,
        }
    }

    /// Writes to the spool, in order, the batch in flight (if it came from memory),
    /// the queued batches and the current batch, and moves the checkpoints past each:
    /// the spool owns them now. Stops at the first that does not fit under the bound
    /// (unless `force`, at shutdown) and returns whether everything went.
    async fn spill(&mut self, force: bool) -> Result<bool> {
        let fits = |me: &Self, n: usize| force || me.spool().has_room(n);
        if let Some(copy) = self.in_flight_copy.take() {
            if !fits(self, copy.bytes()) {
                self.in_flight_copy = Some(copy);
                return Ok(false);
            }
            match self.spool_one(&copy).await {
                Ok(id) => self.in_flight_seg = Some(id),
                Err(e) => {
                    self.in_flight_copy = Some(copy);
                    return Err(e);
                }
            }
        }
        // The queued batches next, oldest first: the spool is sent before the queue,
        // so nothing newer may reach it while an older batch is still queued.
        while let Some(batch) = self.queued.pop_front() {
            if !fits(self, batch.bytes()) {
                self.queued.push_front(batch);
                self.save_spilled().await;
                return Ok(false);
            }
            if let Err(e) = self.spool_one(&batch).await {
                self.queued.push_front(batch);
                self.save_spilled().await;
                return Err(e);
            }
        }
        if self.batch.is_empty() || !fits(self, self.batch.bytes()) {
            self.save_spilled().await;
            return Ok(self.batch.is_empty());
        }
        let batch = Arc::new(self.take_batch());
        if let Err(e) = self.spool_one(&batch).await {
            self.batch = Arc::try_unwrap(batch).unwrap_or_else(|b| (*b).clone());
            self.save_spilled().await;
            return Err(e);
        }
        self.save_spilled().await;
        Ok(true)
    }

    /// Writes `batch` to the spool as one segment and moves the checkpoints past it
    /// (the spool owns those records now). Returns the segment's id.
    async fn spool_one(&mut self, batch: &Arc<Batch>) -> Result<u64> {
        let b = batch.clone();
        let id = self.spool_op(move |s| s.write(b.body())).await?;
        inc(&self.inner.metrics.batches_spooled, 1);
        self.advance_over(batch, batch.len());
        Ok(id)
    }

    /// Saves the checkpoints that spilling moved (the spool owns those records now).
    async fn save_spilled(&mut self) {
        if !self.dirty {
            return;
        }
        if let Err(e) = self.save_checkpoints().await {
            inc(&self.inner.metrics.checkpoint_errors, 1);
            error!(path = %self.checkpoint_path.display(), error = %e, "cannot save checkpoints after spooling, will retry");
        }
    }

    /// Moves the checkpoints over the first `done` records of `batch`.
    fn advance_over(&mut self, batch: &Batch, done: usize) -> bool {
        let mut moved = false;
        for e in &batch.entries()[..done] {
            moved |= self.checkpoints.advance(&e.source, e.offset);
        }
        self.dirty |= moved;
        moved
    }

    /// Sends the current batch: right away when nothing is in flight and the spool
    /// is empty; to the spool while there is room; otherwise once the batch in
    /// flight is settled (back-pressure: reading waits, nothing is dropped).
    async fn hand_over(&mut self) -> Result<()> {
        self.reap_finished().await?;
        if self.batch.is_empty() || !self.intact || self.cancel.is_cancelled() {
            return Ok(());
        }
        self.save_heads().await;
        if self.spool().is_empty() {
            if self.in_flight.is_none() || self.queued.len() >= MAX_QUEUED {
                self.wait_before_spilling().await?;
                if !self.intact || self.cancel.is_cancelled() {
                    return Ok(());
                }
                self.start_next().await?;
                // Regression: the full batch just went out and the emptied one was
                // queued behind it, a no-op send holding one of the queue's slots.
                if self.batch.is_empty() {
                    return Ok(());
                }
            }
            if self.in_flight.is_some() && self.queued.len() < MAX_QUEUED {
                // Keep reading while the indexer works on the batch in flight.
                self.enqueue().await?;
                return Ok(());
            }
        }
        if self.in_flight.is_none() && self.spool().is_empty() && self.queued.is_empty() {
            let batch = self.take_batch();
            self.send(Arc::new(batch), None);
            return Ok(());
        }
        // The indexer is slow or down: spool what fits, in order. The current batch
        // going too means reading goes on; otherwise wait (back-pressure).
        match self.spill(false).await {
            Ok(true) => return self.start_next().await,
            Ok(false) => {}
            Err(e) => {
                error!(error = %e, "cannot write to the spool, waiting for the indexer instead")
            }
        }
        self.update_lag();
        self.wait_paused().await?;
        self.start_next().await
    }

    /// Waits for the batch in flight while reading cannot go on because the spool is
    /// full or disabled (back-pressure; `reading_paused` is 1 meanwhile). Scans go on
    /// (on the timer, and on file events that can mean a rotation): new files are
    /// registered, the gauges stay current and the disk budget is enforced while the
    /// indexer is slow or away.
    async fn wait_paused(&mut self) -> Result<()> {
        if self.in_flight.is_none() {
            return Ok(());
        }
        enum Paused {
            Shipped(std::result::Result<Shipped, tokio::task::JoinError>),
            Scan,
            Idle,
        }
        let metrics = self.inner.metrics.clone();
        metrics.reading_paused.store(1, Ordering::Relaxed);
        let interval = self.inner.config.scan_interval;
        let started = Instant::now();
        let mut next_scan = started + interval;
        let mut said = false;
        let outcome = loop {
            let Run {
                in_flight, wakes, ..
            } = &mut *self;
            let Some(h) = in_flight.as_mut() else {
                break Ok(());
            };
            let p = tokio::select! {
                r = h => Paused::Shipped(r),
                _ = tokio::time::sleep_until(next_scan.into()) => Paused::Scan,
                w = next_wake(wakes) => match w {
                    Some(true) => Paused::Scan,
                    Some(false) => Paused::Idle,
                    None => {
                        *wakes = None;
                        Paused::Idle
                    }
                },
            };
            match p {
                Paused::Shipped(r) => {
                    self.in_flight = None;
                    match r {
                        Ok(shipped) => {
                            self.on_shipped(shipped).await;
                            break Ok(());
                        }
                        Err(e) => break Err(e.into()),
                    }
                }
                Paused::Scan => {
                    if !said && started.elapsed() >= interval {
                        warn!(spool_bytes = self.spool().bytes(), "spool full or disabled, reading paused until the indexer takes the batch in flight");
                        said = true;
                    }
                    if !self.cancel.is_cancelled() {
                        if let Err(e) = self.scan().await {
                            break Err(e);
                        }
                        self.update_lag();
                    }
                    next_scan = Instant::now() + interval;
                }
                Paused::Idle => {}
            }
        };
        metrics.reading_paused.store(0, Ordering::Relaxed);
        if said {
            info!(
                paused_ms = started.elapsed().as_millis() as u64,
                "reading resumed"
            );
        }
        outcome
    }

    /// Waits for the batch in flight (if any) before the batches behind it are spilled.
    /// Spilling costs a write, an fsync, a read back and a re-parse of every batch,
    /// and once the spool holds one batch all later ones follow it there, to keep
    /// the order. An indexer that answers, only slowly (a burst on a busy machine),
    /// is waited for up to [`SPILL_WHEN_BUSY`]: meanwhile the task's files hold the
    /// lines for nothing (the logger keeps them until they are acknowledged) and
    /// reading pauses (`reading_paused`). Spilling starts after [`SPILL_AFTER`] once
    /// an attempt of the batch in flight failed (the indexer is down or refusing) or a
    /// task's logs fill half its disk budget (`budget::pressed`): the spool then keeps what the
    /// budget would give up on. Regression: every ack slower than 500 ms sent the
    /// next batches through the spool, and a 3-agent burst spooled a third to half of
    /// its batches, about a fifth of the pipeline's CPU (BENCHMARKS.md, stop 30).
    async fn wait_before_spilling(&mut self) -> Result<()> {
        let started = Instant::now();
        let interval = self.inner.config.scan_interval;
        let mut next_scan = started + interval;
        let metrics = self.inner.metrics.clone();
        let outcome = loop {
            if let Err(e) = self.settle_in_flight_within(SPILL_AFTER).await {
                break Err(e);
            }
            let failed = metrics.batches_failed.load(Ordering::Relaxed) > self.failed_at_send;
            // Settling the batch in flight starts the oldest queued one: the queue
            // then has room and reading goes on (review: the wait used to last until
            // the whole queue had drained, stalling reading for every round trip).
            if self.in_flight.is_none()
                || self.queued.len() < MAX_QUEUED
                || !self.intact
                || self.cancel.is_cancelled()
                || failed
                || self.budget_pressed
                || started.elapsed() >= SPILL_WHEN_BUSY
            {
                break Ok(());
            }
            metrics.reading_paused.store(1, Ordering::Relaxed);
            // New files and the budgets are looked at while waiting, as in
            // `wait_paused`: a budget pressed meanwhile ends the wait.
            if Instant::now() >= next_scan {
                if let Err(e) = self.scan().await {
                    break Err(e);
                }
                self.update_lag();
                next_scan = Instant::now() + interval;
            }
        };
        metrics.reading_paused.store(0, Ordering::Relaxed);
        outcome
    }

    /// Waits up to `limit` for the batch in flight (if any) and settles it. A healthy
    /// indexer answers well within that, and waiting is far cheaper than writing,
    /// fsyncing and re-reading the next batch through the spool. Regression: spilling
    /// whenever a batch was in flight sent about every other batch through the spool
    /// at full speed and cost a fifth of the shipper's CPU (BENCHMARKS.md).
    async fn settle_in_flight_within(&mut self, limit: Duration) -> Result<()> {
        let Some(h) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let joined = tokio::select! {
            r = h => Some(r),
            _ = tokio::time::sleep(limit) => None,
            _ = self.cancel.cancelled() => None,
        };
        if let Some(r) = joined {
            self.in_flight = None;
            self.on_shipped(r?).await;
        }
        Ok(())
    }

    /// Advances the checkpoints over what the indexer acknowledged and saves them.
    async fn on_shipped(&mut self, shipped: Shipped) {
        let seg = self.in_flight_seg.take();
        // A spooled batch that was cut short is still in the spool, in order; only a
        // batch from memory leaves a gap later batches must not jump.
        if !shipped.complete() && seg.is_none() {
            self.intact = false;
        }
        self.in_flight_copy = None;
        if let Some(id) = seg {
            if shipped.complete() {
                if let Err(e) = self.spool_op(move |s| s.remove(id)).await {
                    // It is sent again after a restart; the indexer drops it then.
                    error!(error = %e, segment = id, "cannot remove a delivered spool segment");
                }
            }
        }
        // The next queued batch goes out before anything else here, so the indexer
        // is never left waiting on our bookkeeping. Safe in this order: checkpoints
        // only ever move over acknowledged records.
        self.start_queued();
        let mut moved = self.advance_over(&shipped.batch, shipped.done);
        for t in self.files.values() {
            moved |= self.checkpoints.grow_head(&t.source, t.head);
        }
        moved |= self.settle_released().await;
        self.dirty |= moved;
        self.save_soon().await;
        self.update_lag();
    }

    /// Makes the heads of what is about to be sent durable first. Regression: a file
    /// registered empty, shipped, then truncated and rewritten while the agent was
    /// killed before its next checkpoint save matched its entry's empty head, was
    /// resumed under its old source, and the indexer dropped the new lines as already
    /// committed. Costs a save per batch only while some file is under 1 KiB into its
    /// head.
    async fn save_heads(&mut self) {
        let mut grew = false;
        for t in self.files.values() {
            grew |= self.checkpoints.grow_head(&t.source, t.head);
        }
        if grew {
            self.dirty = true;
            if let Err(e) = self.save_checkpoints().await {
                inc(&self.inner.metrics.checkpoint_errors, 1);
                error!(path = %self.checkpoint_path.display(), error = %e, "cannot save file heads before sending, sending anyway");
            }
        }
    }

    /// Forgets the entries of released files once all they held is acknowledged; a
    /// logger rotation is deleted first (the contract with the logger: a rotated file
    /// that exists is not shipped yet), so a crash in between finds an entry without
    /// a file, never a file without an entry, which would be shipped again. Returns
    /// whether the checkpoints changed.
    async fn settle_released(&mut self) -> bool {
        let mut moved = false;
        let mut due = Vec::new();
        let cps = &mut self.checkpoints;
        let files = &self.files;
        self.releasing.retain(|r| {
            if files.contains_key(r.source.as_ref()) {
                // Its source lives on in a copytruncate copy.
                return false;
            }
            match cps.files.get(r.source.as_ref()) {
                Some(e) if e.offset < r.end => true,
                Some(_) if r.rotation.is_some() => {
                    due.push(r.clone());
                    false
                }
                Some(_) => {
                    moved |= cps.remove(&r.source);
                    false
                }
                None => false,
            }
        });
        if due.is_empty() {
            return moved;
        }
        let jobs: Vec<(PathBuf, FileId)> = due
            .iter()
            .filter_map(|r| Some((r.rotation.clone()?, r.id)))
            .collect();
        let outcome = tokio::task::spawn_blocking(move || discover::delete_rotations(&jobs)).await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                error!(error = %e, "deleting shipped rotated files failed, will retry");
                self.releasing.extend(due);
                return moved;
            }
        };
        for (r, result) in due.into_iter().zip(outcome) {
            match result {
                Ok(deleted) => {
                    match deleted {
                        Some(path) => {
                            info!(source = %r.source, path = %path.display(), bytes = r.end, "deleted a rotated log file, all of it shipped")
                        }
                        None => {
                            debug!(source = %r.source, "a shipped rotated file was already gone")
                        }
                    }
                    self.undeletable.remove(&r.source);
                    moved |= self.checkpoints.remove(&r.source);
                }
                Err(e) => {
                    if self.undeletable.insert(r.source.clone()) {
                        warn!(source = %r.source, path = ?r.rotation, error = %e, "cannot delete a shipped rotated log file, will retry");
                    }
                    self.releasing.push(r);
                }
            }
        }
        moved
    }

    /// Starts saving the checkpoints in the background if they changed and no save
    /// is running (a running one is collected first if it finished); otherwise the
    /// change waits for the running save to end (`wait` wakes for it). Acknowledged
    /// advances are saved this way: the reader and the next batch's round trip go on
    /// meanwhile. Regression: awaiting the write, fsync and rename after every
    /// acknowledgement stopped reading for it at each batch. Safe: a save that lags
    /// behind only means records re-sent after a crash, which the indexer skips.
    async fn save_soon(&mut self) {
        if self.saving.as_ref().is_some_and(|h| h.is_finished()) {
            let h = self.saving.take().expect("checked above");
            let r = h.await;
            self.saved(r);
        }
        if !self.dirty || self.saving.is_some() {
            return;
        }
        let mut cps = self.checkpoints.clone();
        let path = self.checkpoint_path.clone();
        self.dirty = false;
        self.saving = Some(tokio::task::spawn_blocking(move || {
            let gone = cps.prune_missing();
            cps.save(&path).map(|()| gone)
        }));
    }

    /// Takes in the outcome of a background save.
    fn saved(&mut self, r: std::result::Result<Result<Vec<String>>, tokio::task::JoinError>) {
        match r.map_err(Error::from).and_then(|r| r) {
            Ok(gone) => {
                for src in gone {
                    self.checkpoints.remove(&src);
                }
            }
            Err(e) => {
                self.dirty = true;
                inc(&self.inner.metrics.checkpoint_errors, 1);
                error!(path = %self.checkpoint_path.display(), error = %e, "cannot save checkpoints, will retry");
            }
        }
    }

    /// Waits for the background save, if one runs.
    async fn finish_save(&mut self) {
        if let Some(h) = self.saving.take() {
            let r = h.await;
            self.saved(r);
        }
    }

    /// Saves the checkpoints now, after any background save (so saves stay in order).
    async fn save_checkpoints(&mut self) -> Result<()> {
        self.finish_save().await;
        let mut cps = self.checkpoints.clone();
        let path = self.checkpoint_path.clone();
        let cps = tokio::task::spawn_blocking(move || {
            cps.prune_missing();
            cps.save(&path).map(|()| cps)
        })
        .await??;
        self.checkpoints = cps;
        self.dirty = false;
        Ok(())
    }

    fn update_lag(&mut self) {
        let now = Instant::now();
        let mut bytes = BTreeMap::new();
        let mut secs = BTreeMap::new();
        for t in self.files.values() {
            let done = self.checkpoints.offset(&t.source);
            let behind = t.file_len.saturating_sub(done);
            bytes.insert(t.source.to_string(), behind);
            if behind > 0 {
                let since = *self.behind_since.entry(t.source.to_string()).or_insert(now);
                secs.insert(t.source.to_string(), (now - since).as_secs_f64());
            } else {
                self.behind_since.remove(t.source.as_ref());
                secs.insert(t.source.to_string(), 0.0);
            }
        }
        self.behind_since.retain(|s, _| bytes.contains_key(s));
        let m = &self.inner.metrics;
        *m.lag.lock().unwrap_or_else(|p| p.into_inner()) = bytes;
        *m.lag_seconds.lock().unwrap_or_else(|p| p.into_inner()) = secs;
    }

    async fn shutdown(mut self) -> Result<()> {
        if let Some(h) = self.in_flight.take() {
            let shipped = h.await?;
            self.on_shipped(shipped).await;
        }
        let held = tail::flush_events(&mut self.files, &self.round, &self.inner.metrics);
        self.batch.append(&held, 0, held.len());
        // Queued batches get their one last attempt each, in order, unless the spool
        // holds older ones (then they are spooled behind them, below).
        while self.intact && self.spool().is_empty() {
            let Some(batch) = self.queued.pop_front() else {
                break;
            };
            let shipped = self.inner.sender.ship(batch, &self.cancel).await;
            self.on_shipped(shipped).await;
        }
        if self.intact
            && !self.spool().is_empty()
            && (!self.batch.is_empty() || !self.queued.is_empty())
        {
            // Behind spooled batches: spooled too, to keep the order.
            if let Err(e) = self.spill(true).await {
                warn!(error = %e, "cannot spool the last batches, they are read again on the next start");
            }
        }
        // Regression: when spooling the last batch failed, it was still sent, ahead
        // of older spooled batches, which the indexer would then have dropped as
        // duplicates. Only with nothing older left is it sent.
        if self.intact
            && !self.batch.is_empty()
            && self.spool().is_empty()
            && self.queued.is_empty()
        {
            self.save_heads().await;
            // The token is cancelled, so this is exactly one more attempt.
            let batch = self.take_batch();
            let shipped = self.inner.sender.ship(Arc::new(batch), &self.cancel).await;
            self.on_shipped(shipped).await;
        }
        self.finish_save().await;
        if self.dirty {
            self.save_checkpoints().await?;
        }
        info!(host = %self.inner.config.host, sources = self.checkpoints.files.len(), "shipper stopped");
        Ok(())
    }
}

/// The next batch of file events: `Some(rescan)` (whether any of them can mean files
/// appeared or went), `None` once the watcher is gone.
async fn next_wake(wakes: &mut Option<discover::Wakes>) -> Option<bool> {
    let Some(w) = wakes.as_mut() else {
        return std::future::pending().await;
    };
    w.next().await
}

/// Loads the checkpoints; a file that is not valid JSON (it cannot be torn, saves are
/// atomic, so someone edited it) is set aside and shipping starts over: the indexer
/// drops what it already has, so that costs bandwidth, not correctness.
pub(crate) fn load_checkpoints(path: &std::path::Path) -> Result<Checkpoints> {
    match Checkpoints::load(path) {
        Ok(c) => Ok(c),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::InvalidData => {
            let aside = path.with_extension("json.invalid");
            warn!(path = %path.display(), moved_to = %aside.display(), error = %source, "checkpoint file is not valid, starting over");
            std::fs::rename(path, &aside).map_err(|e| Error::io(path, e))?;
            Ok(Checkpoints::default())
        }
        Err(e) => Err(e),
    }
}
