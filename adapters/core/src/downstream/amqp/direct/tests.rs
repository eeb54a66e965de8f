use super::*;

#[test]
fn a_transfer_frame_decodes_as_the_transfer_it_stands_for() {
    let mut scratch = Vec::new();
    let mut out = BytesMut::new();
    for (handle, id, settled) in [(0, 0, true), (7, 300, false), (70_000, u32::MAX, true)] {
        out.clear();
        transfer_frame(&mut scratch, handle, id, settled, b"message", &mut out);
        let (frame, used) = codec::decode_frame(&out, u32::MAX)
            .expect("valid")
            .expect("complete");
        assert_eq!(used, out.len());
        let Frame::Amqp {
            channel,
            performative: Some(Performative::Transfer(t)),
            payload,
        } = frame
        else {
            panic!("a transfer: {frame:?}");
        };
        assert_eq!(channel, 0);
        assert_eq!(t.handle.0, handle);
        assert_eq!(t.delivery_id, Some(id));
        assert_eq!(
            t.delivery_tag.as_ref().map(|t| t.to_vec()),
            Some(id.to_be_bytes().to_vec())
        );
        assert_eq!(t.message_format, Some(0));
        assert_eq!(t.settled, Some(settled));
        assert!(!t.more);
        assert_eq!(payload, b"message");
    }
}

#[test]
fn frames_are_counted_in_a_split_transfer() {
    let mut out = BytesMut::new();
    let transfer = Transfer {
        handle: Handle(1),
        delivery_id: Some(1),
        delivery_tag: Some(Binary::from(vec![1])),
        message_format: Some(0),
        settled: Some(true),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    };
    codec::encode_transfer(0, &transfer, &[9; 2000], 512, &mut out).expect("encodes");
    assert_eq!(count_frames(&out), 5);
}
