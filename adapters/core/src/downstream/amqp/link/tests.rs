use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn jobs_of_sessions_woken_together_are_taken_as_one_batch() {
    let (tx, mut rx) = mpsc::channel::<u8>(64);
    // The link's task: takes jobs as `run` does and notes how many it took back to back, before the
    // queue ran dry.
    let link = tokio::spawn(async move {
        let mut batches = Vec::new();
        while let Some(_job) = next_job(&mut rx).await {
            let mut batch = 1;
            while rx.try_recv().is_ok() {
                batch += 1;
            }
            batches.push(batch);
        }
        batches
    });
    // Ten sessions become ready together on the worker; each queues one job when it runs. The first
    // job wakes the link's task into the worker's next slot, ahead of the other nine: without the yield
    // the link took that job alone.
    let sessions = tokio::spawn(async move {
        let sessions: Vec<_> = (0..10u8)
            .map(|i| {
                let tx = tx.clone();
                tokio::spawn(async move { tx.send(i).await.expect("queued") })
            })
            .collect();
        for s in sessions {
            s.await.expect("session");
        }
    });
    sessions.await.expect("sessions");
    let batches = link.await.expect("link");
    assert_eq!(batches, vec![10], "one batch of ten jobs");
}
