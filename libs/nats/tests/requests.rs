//! Requests with progress reports (`ferry_nats::requests`) on a real nats-server: a slow responder that
//! reports progress is waited for and asked once; one that went silent (a router killed holding the
//! request) is asked again, and another answers long before the outcome bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use ferry_nats::requests::{self, Requests, Unanswered};
use ferry_test_support::NatsServer;
use futures_util::StreamExt;

async fn client(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url()).await.expect("connect")
}

fn subject(s: &str) -> Subject {
    Subject::from(s.to_owned())
}

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_slow_responder_that_reports_progress_is_waited_for_and_asked_once() {
    let server = NatsServer::start();
    let responder = client(&server).await;
    let mut sub = responder.subscribe("slow").await.expect("subscribe");
    ferry_nats::round_trip(&responder, WITHIN)
        .await
        .expect("in place");
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            count.fetch_add(1, Ordering::SeqCst);
            let Some(reply) = m.reply else { continue };
            // Three seconds of work (twice the asker's quiet time), reported every half second.
            for _ in 0..6 {
                tokio::time::sleep(requests::PROGRESS_EVERY).await;
                responder
                    .publish_with_headers(reply.clone(), requests::progress_headers(), Bytes::new())
                    .await
                    .expect("progress");
            }
            responder
                .publish(reply, Bytes::from_static(b"done"))
                .await
                .expect("answer");
        }
    });
    let asker = Requests::open(client(&server).await).await.expect("open");
    let answer = asker
        .ask(
            subject("slow"),
            HeaderMap::new(),
            Bytes::from_static(b"q"),
            Some(requests::QUIET),
            WITHIN,
        )
        .await
        .expect("answered");
    assert_eq!(answer.payload.as_ref(), b"done");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "asked again although it reported progress"
    );
}

#[tokio::test]
async fn a_responder_that_went_silent_is_replaced_well_before_the_bound() {
    let server = NatsServer::start();
    let asker = Requests::open(client(&server).await).await.expect("open");
    // The first responder takes the request and dies with it (leaves without a word).
    let dying = client(&server).await;
    let mut first = dying
        .queue_subscribe("work", "routers".into())
        .await
        .expect("sub");
    ferry_nats::round_trip(&dying, WITHIN)
        .await
        .expect("in place");
    let started = Instant::now();
    let asking = {
        let asker = asker.clone();
        tokio::spawn(async move {
            asker
                .ask(
                    subject("work"),
                    HeaderMap::new(),
                    Bytes::from_static(b"q"),
                    Some(requests::QUIET),
                    WITHIN,
                )
                .await
        })
    };
    first.next().await.expect("the first responder got it");
    drop(first);
    drop(dying);
    // Another responder, alive.
    let alive = client(&server).await;
    let mut second = alive
        .queue_subscribe("work", "routers".into())
        .await
        .expect("sub");
    ferry_nats::round_trip(&alive, WITHIN)
        .await
        .expect("in place");
    tokio::spawn(async move {
        while let Some(m) = second.next().await {
            if let Some(reply) = m.reply {
                let _ = alive.publish(reply, Bytes::from_static(b"ok")).await;
            }
        }
    });
    let answer = asking.await.expect("join").expect("answered by the second");
    assert_eq!(answer.payload.as_ref(), b"ok");
    assert!(
        started.elapsed() < requests::QUIET + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn without_quiet_a_silent_responder_times_out_and_nobody_is_no_responders() {
    let server = NatsServer::start();
    let asker = Requests::open(client(&server).await).await.expect("open");
    let nobody = asker
        .ask(
            subject("none"),
            HeaderMap::new(),
            Bytes::new(),
            None,
            WITHIN,
        )
        .await;
    assert_eq!(nobody.err(), Some(Unanswered::NoResponders));
    let silent = client(&server).await;
    let _sub = silent.subscribe("silent").await.expect("sub");
    ferry_nats::round_trip(&silent, WITHIN)
        .await
        .expect("in place");
    let started = Instant::now();
    let timed_out = asker
        .ask(
            subject("silent"),
            HeaderMap::new(),
            Bytes::new(),
            None,
            Duration::from_millis(800),
        )
        .await;
    assert_eq!(timed_out.err(), Some(Unanswered::TimedOut));
    assert!(started.elapsed() >= Duration::from_millis(800));
}
