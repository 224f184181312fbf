//! The publish/subscribe family: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE,
//! PUNSUBSCRIBE, PUBLISH and PUBSUB. The server runs them with its channels
//! and the connection's subscriptions (`server/pubsub.rs`); the proxy
//! forwards `PUBLISH` and `PUBSUB`, and refuses the subscriptions, which
//! need a connection of their own upstream.

use crate::command::table::{Arg, Flags, Group, Handler, Spec};
use crate::server::PubSubOp;

/// The family's commands.
pub const COMMANDS: &[Spec] = &[
    SUBSCRIBE,
    UNSUBSCRIBE,
    PSUBSCRIBE,
    PUNSUBSCRIBE,
    PUBLISH,
    PUBSUB,
];

/// The subscription commands: allowed while subscribed, and needing the
/// connection's own state.
const SUBSCRIPTION: Flags = Flags::PUBSUB
    .union(Flags::ANYTIME)
    .union(Flags::SUBSCRIBED_OK)
    .union(Flags::CONN_STATE);

const SUBSCRIBE: Spec = Spec::new(
    "subscribe",
    -2,
    SUBSCRIPTION,
    Group::PubSub,
    "Listens to the channels: their messages arrive as pushes (RESP3) or arrays (RESP2).",
    Handler::PubSub(PubSubOp::Subscribe),
)
.args(&[Arg::string("channel").multiple()])
.since("2.0.0");

const UNSUBSCRIBE: Spec = Spec::new(
    "unsubscribe",
    -1,
    SUBSCRIPTION,
    Group::PubSub,
    "Stops listening to the channels (none: to every channel).",
    Handler::PubSub(PubSubOp::Unsubscribe),
)
.args(&[Arg::string("channel").optional().multiple()])
.since("2.0.0");

const PSUBSCRIBE: Spec = Spec::new(
    "psubscribe",
    -2,
    SUBSCRIPTION,
    Group::PubSub,
    "Listens to every channel matching the glob patterns.",
    Handler::PubSub(PubSubOp::PSubscribe),
)
.args(&[Arg::string("pattern").multiple()])
.since("2.0.0");

const PUNSUBSCRIBE: Spec = Spec::new(
    "punsubscribe",
    -1,
    SUBSCRIPTION,
    Group::PubSub,
    "Stops listening to the patterns (none: to every pattern).",
    Handler::PubSub(PubSubOp::PUnsubscribe),
)
.args(&[Arg::string("pattern").optional().multiple()])
.since("2.0.0");

const PUBLISH: Spec = Spec::new(
    "publish",
    3,
    Flags::PUBSUB.union(Flags::ANYTIME).union(Flags::FAST),
    Group::PubSub,
    "Sends the message to the channel's subscribers; how many got it.",
    Handler::PubSub(PubSubOp::Publish),
)
.args(&[Arg::string("channel"), Arg::string("message")])
.since("2.0.0");

const PUBSUB: Spec = Spec::new(
    "pubsub",
    -2,
    Flags::empty(),
    Group::PubSub,
    "The channels and patterns listened to (CHANNELS, NUMSUB, NUMPAT).",
    Handler::Container,
)
.since("2.8.0")
.subcommands(&[
    PUBSUB_CHANNELS,
    PUBSUB_NUMSUB,
    PUBSUB_NUMPAT,
    Spec::container_help("pubsub|help", Group::PubSub),
]);

const PUBSUB_CHANNELS: Spec = Spec::new(
    "pubsub|channels",
    -2,
    Flags::PUBSUB.union(Flags::ANYTIME),
    Group::PubSub,
    "The channels with subscribers (matching the pattern, if given).",
    Handler::PubSub(PubSubOp::Channels),
)
.args(&[Arg::string("pattern").optional()])
.since("2.8.0");

const PUBSUB_NUMSUB: Spec = Spec::new(
    "pubsub|numsub",
    -2,
    Flags::PUBSUB.union(Flags::ANYTIME),
    Group::PubSub,
    "Each channel given, with its number of subscribers.",
    Handler::PubSub(PubSubOp::NumSub),
)
.args(&[Arg::string("channel").optional().multiple()])
.since("2.8.0");

const PUBSUB_NUMPAT: Spec = Spec::new(
    "pubsub|numpat",
    2,
    Flags::PUBSUB.union(Flags::ANYTIME),
    Group::PubSub,
    "How many patterns have subscribers.",
    Handler::PubSub(PubSubOp::NumPat),
)
.since("2.8.0");
