use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::{DeliveryState, MessageId, Rejected};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::types::primitives::Symbol;

use super::command::rejected;
use super::parse::id_string;

#[test]
fn message_ids_become_text() {
    assert_eq!(id_string(MessageId::String("a".into())), "a");
    assert_eq!(id_string(MessageId::Ulong(42)), "42");
    assert_eq!(
        id_string(MessageId::Binary(Binary::from(vec![0xab, 0x01]))),
        "ab01"
    );
    let uuid = fe2o3_amqp::types::primitives::Uuid::from([
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde,
        0xf0,
    ]);
    assert_eq!(
        id_string(MessageId::Uuid(uuid)),
        "12345678-9abc-def0-1234-56789abcdef0"
    );
}

#[test]
fn reject_uses_standard_conditions_when_it_can() {
    match rejected("amqp:resource-limit-exceeded", "too many") {
        DeliveryState::Rejected(Rejected { error: Some(e) }) => {
            assert_eq!(
                e.condition,
                ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded)
            );
        }
        other => panic!("{other:?}"),
    }
    match rejected("hono:bad-request", "bad") {
        DeliveryState::Rejected(Rejected { error: Some(e) }) => {
            assert_eq!(
                e.condition,
                ErrorCondition::Custom(Symbol::from("hono:bad-request"))
            );
        }
        other => panic!("{other:?}"),
    }
}
