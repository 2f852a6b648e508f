//! The vote log on Kafka (any Kafka-protocol broker): one topic, votes keyed by decision id,
//! each sent to the partition `partition_for(decision, partitions)` names, so every process
//! and the embedded log agree on where a decision's votes are. This module is the only place
//! a Kafka client is configured.
//!
//! ```text
//!  append ─▶ idempotent producer (acks=all) ─▶ topic partition p ─▶ Position(p, Kafka offset)
//!  read(p, from) ─▶ a consumer assigned to p (no group), seeked to `from`, kept per partition
//! ```
//!
//! An append resolves only once the broker acknowledged it with every in-sync replica, so
//! "acknowledged" means the same here as with the segment log: durable.
//!
//! An idempotent producer is one session with the broker (a producer id and per-partition
//! sequence numbers). A broker that restarted can refuse every later append of a session it
//! no longer follows, and librdkafka may declare the session fatal: then the log starts a
//! new producer, so appends succeed again once the broker is back (see `renew_producer`).
//!
//! Anything that can reach the broker can produce to the topic, so a reader takes only what
//! Canopy's own producers signed, and what it refuses does not stop it:
//!
//! ```text
//!  append: value ─▶ HMAC-SHA-256(log key; tag ‖ topic ‖ partition ‖ value) ─▶ header canopy-mac
//!  read:   record ─▶ decodes? valid alone? signed for this topic and partition? ─▶ the reader
//!                       └─ no: produced to <topic>.dead-letter (reason, partition, offset),
//!                              acknowledged, counted; the read goes on past it
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use std::marker::PhantomData;

use canopy_schemas::{SensorReading, VoteLogEntry};
use hmac::{Hmac, Mac};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sha2::Sha256;

use crate::{AppendFuture, EntriesRead, EntryLog, IngestError, LogEntry, Position, ReadBatch};

/// The header that carries a record's signature.
pub const MAC_HEADER: &str = "canopy-mac";
/// Headers of a dead letter: why it was refused, and where it was in the topic.
pub const REASON_HEADER: &str = "canopy-reason";
pub const PARTITION_HEADER: &str = "canopy-partition";
pub const OFFSET_HEADER: &str = "canopy-offset";
/// Separates these signatures from any other use of the key (a new layout is a new tag).
const MAC_DOMAIN: &[u8] = b"canopy/log-record/v1\0";

/// The cluster's key for signing what its producers append: 32 bytes, the same on every
/// process of a cluster (`<data_dir>/keys/log-hmac.key`).
#[derive(Clone, PartialEq, Eq)]
pub struct LogKey([u8; 32]);

impl LogKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogKey(..)")
    }
}

/// Why a reader refused a record; the code is the dead letter's `canopy-reason`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DeadLetterReason {
    /// Not an entry of the log's kind at all.
    Undecodable,
    /// An entry that fails the checks it can pass on its own (`LogEntry::validate_alone`).
    Invalid,
    /// No signature header: not appended by a Canopy producer.
    Unsigned,
    /// A signature that is not the log key's for this value, topic and partition (another
    /// key, another value, or a signed record copied to another topic or partition).
    BadSignature,
}

impl DeadLetterReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Invalid => "invalid",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// A record of a dead-letter topic, as [`KafkaEntryLog::read_dead_letters`] reads it back.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeadLetter {
    /// The `canopy-reason` code.
    pub reason: String,
    /// Where the refused record is in the log's topic.
    pub partition: u32,
    pub offset: u64,
    /// Its key and value as they were received.
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Signs and checks records of one topic: the keyed state with the tag and topic absorbed,
/// cloned per record.
#[derive(Clone)]
struct Signer {
    prefix: Hmac<Sha256>,
}

impl Signer {
    fn new(key: &LogKey, topic: &str) -> Self {
        let mut prefix =
            <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length");
        prefix.update(MAC_DOMAIN);
        prefix.update(&(topic.len() as u64).to_be_bytes());
        prefix.update(topic.as_bytes());
        Self { prefix }
    }

    fn keyed(&self, partition: u32, value: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.prefix.clone();
        mac.update(&partition.to_be_bytes());
        mac.update(value);
        mac
    }

    fn sign(&self, partition: u32, value: &[u8]) -> [u8; 32] {
        self.keyed(partition, value).finalize().into_bytes().into()
    }

    /// In constant time.
    fn verify(&self, partition: u32, value: &[u8], mac: &[u8]) -> bool {
        self.keyed(partition, value).verify_slice(mac).is_ok()
    }
}

/// How the Kafka log reaches its topic.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    pub partitions: u32,
    pub replication: i32,
    /// Set on a topic created here; an existing topic with a lower value is refused (an
    /// append acknowledged by fewer replicas could be lost with one broker).
    pub min_insync_replicas: i32,
    /// Create the topic if it does not exist (else its absence is an error).
    pub create_topic: bool,
    /// How long a call to the broker may take before it is an error.
    pub timeout: Duration,
    /// Signs every appended record; a read takes only records it signed.
    pub signing_key: LogKey,
    /// Whether a read produces what it refuses to `<topic>.dead-letter`. A reader that only
    /// inspects the topic (a test's recount, a tool) skips and counts them without writing,
    /// so the engine's dead letters are the only ones.
    pub write_dead_letters: bool,
    /// librdkafka's connection security properties (`security.protocol`,
    /// `ssl.ca.location`, `sasl.mechanism`, `sasl.username`, `sasl.password`), set on every
    /// client; none for a plain connection.
    pub security: Vec<(String, String)>,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>, signing_key: LogKey) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            partitions: 8,
            replication: 1,
            min_insync_replicas: 1,
            create_topic: true,
            timeout: Duration::from_secs(10),
            signing_key,
            write_dead_letters: true,
            security: Vec::new(),
        }
    }

    /// `security.protocol` as configured (`plaintext` if not).
    pub fn security_protocol(&self) -> &str {
        self.security
            .iter()
            .find(|(key, _)| key == "security.protocol")
            .map_or("plaintext", |(_, value)| value.as_str())
    }

    /// Where this topic's refused records go.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dead-letter", self.topic)
    }
}

fn kafka_error(what: &str) -> impl FnOnce(KafkaError) -> IngestError + '_ {
    move |error| IngestError::Kafka {
        reason: format!("{what}: {error}"),
    }
}

/// A consumer assigned to one partition, and the offset it will deliver next.
struct PartitionReader {
    consumer: BaseConsumer,
    next: u64,
    /// Reached the partition's end once; later polls wait for nothing.
    at_end: bool,
    /// Stopped before a gap in the offsets: the next read starts a fresh consumer there.
    before_gap: bool,
}

/// Per partition, the offsets `[from, to)` a dead-lettering read of this log went through:
/// a record refused there was dead-lettered already, so another read (a reader recreated
/// after an error, a second reader in the process) skips it without writing it again.
#[derive(Default)]
struct Passed(HashMap<u32, (u64, u64)>);

impl Passed {
    fn covers(&self, partition: u32, offset: u64) -> bool {
        self.0
            .get(&partition)
            .is_some_and(|&(from, to)| from <= offset && offset < to)
    }

    /// A read went through `[from, to)`.
    fn note(&mut self, partition: u32, from: u64, to: u64) {
        let range = self.0.entry(partition).or_insert((from, from));
        if range.0 <= from && from <= range.1 {
            range.1 = range.1.max(to);
        } else {
            *range = (from, to);
        }
    }
}

/// The vote log on Kafka: votes keyed by decision id.
pub type KafkaLog = KafkaEntryLog<VoteLogEntry>;
/// The sensor log on Kafka: readings keyed by region, so a producer outside Canopy that keys
/// by region lands each region in the partition Canopy expects.
pub type KafkaSensorLog = KafkaEntryLog<SensorReading>;

/// A log of one kind of entry on a Kafka topic.
pub struct KafkaEntryLog<E: LogEntry> {
    config: KafkaConfig,
    /// The current producer session; replaced when the broker stops taking its appends.
    producer: RwLock<FutureProducer>,
    /// When the producer was last replaced (at most one new session per second).
    producer_renewed: Mutex<Option<Instant>>,
    /// Answers watermark (end offset) queries; one client, its connections kept.
    metadata: BaseConsumer,
    readers: Mutex<HashMap<u32, PartitionReader>>,
    /// The last end found per partition, where the next search starts.
    known_ends: Mutex<HashMap<u32, u64>>,
    /// Per partition, the first offset a fetch skipped over, and when that was first seen.
    gaps: Mutex<HashMap<u32, (u64, std::time::Instant)>>,
    /// Per partition, one past the highest offset an append of this log was acknowledged at.
    acked_ends: Mutex<HashMap<u32, u64>>,
    signer: Signer,
    /// The dead-letter topic was found or created.
    dead_letter_topic_ready: AtomicBool,
    passed: Mutex<Passed>,
    dead_letters_written: AtomicU64,
    refused: AtomicU64,
    entries: PhantomData<fn() -> E>,
}

/// An entry handed to the producer, with what is needed to place it if the broker's answer
/// carries no offset.
struct Pending<E> {
    delivery: DeliveryFuture,
    partition: u32,
    floor: u64,
    logged: E,
}

impl<E: LogEntry> std::fmt::Debug for KafkaEntryLog<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<E: LogEntry> KafkaEntryLog<E> {
    /// Connects, creates the topic if allowed and missing, and checks that it has the
    /// configured partition count and replication; refuses a topic that does not.
    pub fn connect(config: KafkaConfig) -> Result<Self, IngestError> {
        let producer = new_producer(&config)?;
        let metadata: BaseConsumer = client_config(&config)
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(kafka_error("creating a metadata client"))?;
        let log = Self {
            signer: Signer::new(&config.signing_key, &config.topic),
            config,
            producer: RwLock::new(producer),
            producer_renewed: Mutex::new(None),
            metadata,
            readers: Mutex::new(HashMap::new()),
            known_ends: Mutex::new(HashMap::new()),
            gaps: Mutex::new(HashMap::new()),
            acked_ends: Mutex::new(HashMap::new()),
            dead_letter_topic_ready: AtomicBool::new(false),
            passed: Mutex::new(Passed::default()),
            dead_letters_written: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            entries: PhantomData,
        };
        log.ensure_topic()?;
        Ok(log)
    }

    fn ensure_topic(&self) -> Result<(), IngestError> {
        let config = &self.config;
        let mut found = self.topic_layout(&config.topic)?;
        if found.is_none() && config.create_topic {
            found = self.create_topic(&config.topic, config.partitions)?;
        }
        let Some((partitions, replication)) = found else {
            return Err(IngestError::KafkaTopic {
                topic: config.topic.clone(),
                reason: "it does not exist (and creating it is not allowed)".into(),
            });
        };
        if partitions != config.partitions {
            return Err(IngestError::KafkaTopic {
                topic: config.topic.clone(),
                reason: format!(
                    "it has {partitions} partitions where {} are configured; a decision's \
                     partition depends on the count, so it cannot change under a running log",
                    config.partitions
                ),
            });
        }
        if replication < config.replication {
            return Err(IngestError::KafkaTopic {
                topic: config.topic.clone(),
                reason: format!(
                    "it has {replication} replicas per partition where {} are configured",
                    config.replication
                ),
            });
        }
        match self.min_insync_replicas()? {
            Some(actual) if actual < config.min_insync_replicas => Err(IngestError::KafkaTopic {
                topic: config.topic.clone(),
                reason: format!(
                    "its min.insync.replicas is {actual} where {} is configured: an append \
                     acknowledged by fewer replicas could be lost with one broker",
                    config.min_insync_replicas
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The topic's `min.insync.replicas`, if the broker reports it.
    fn min_insync_replicas(&self) -> Result<Option<i32>, IngestError> {
        let admin: AdminClient<DefaultClientContext> = client_config(&self.config)
            .create()
            .map_err(kafka_error("creating the admin client"))?;
        let topic = ResourceSpecifier::Topic(&self.config.topic);
        let results = futures_executor::block_on(admin.describe_configs(
            [&topic],
            &AdminOptions::new().request_timeout(Some(self.config.timeout)),
        ))
        .map_err(kafka_error("describing the topic's configuration"))?;
        for result in results {
            let resource = result.map_err(|code| IngestError::Kafka {
                reason: format!("describing topic {}: {code}", self.config.topic),
            })?;
            if let Some(value) = resource
                .get("min.insync.replicas")
                .and_then(|entry| entry.value.as_deref())
            {
                return Ok(value.trim().parse().ok());
            }
        }
        Ok(None)
    }

    /// Creates topic `name` with the configured replication and `min.insync.replicas`, and
    /// waits until the broker lists it; returns its layout as [`Self::topic_layout`] does.
    fn create_topic(&self, name: &str, partitions: u32) -> Result<Option<(u32, i32)>, IngestError> {
        let config = &self.config;
        let admin: AdminClient<DefaultClientContext> = client_config(config)
            .create()
            .map_err(kafka_error("creating the admin client"))?;
        let min_insync = config.min_insync_replicas.to_string();
        let topic = NewTopic::new(
            name,
            partitions as i32,
            TopicReplication::Fixed(config.replication),
        )
        .set("min.insync.replicas", &min_insync);
        let results = futures_executor::block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(config.timeout)),
        ))
        .map_err(kafka_error("creating the topic"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(IngestError::Kafka {
                        reason: format!("creating topic {name}: {code}"),
                    });
                }
            }
        }
        let deadline = std::time::Instant::now() + config.timeout;
        let mut found = None;
        while found.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            found = self.topic_layout(name)?;
        }
        Ok(found)
    }

    /// (partitions, smallest replica count) of topic `name`, or None if it does not exist.
    fn topic_layout(&self, name: &str) -> Result<Option<(u32, i32)>, IngestError> {
        let metadata = self
            .metadata
            .fetch_metadata(Some(name), self.config.timeout)
            .map_err(|error| {
                let transport = matches!(
                    error,
                    KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure)
                );
                let hint = match self.config.security_protocol() {
                    _ if !transport => "",
                    "plaintext" => {
                        " (is the broker unreachable, or does it take TLS only? kafka.security_protocol = \"ssl\" then)"
                    }
                    "sasl_plaintext" => {
                        " (is the broker unreachable, were the SASL credentials refused, or does it take TLS only?)"
                    }
                    "ssl" => {
                        " (is the broker unreachable, or is its certificate not signed by a CA in kafka.ca_file or the system's roots?)"
                    }
                    _ => {
                        " (is the broker unreachable, its certificate not signed by a CA in kafka.ca_file or the system's roots, or were the SASL credentials refused?)"
                    }
                };
                IngestError::Kafka {
                    reason: format!("reading the topic's metadata: {error}{hint}"),
                }
            })?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
            return Ok(None);
        };
        if topic.error().is_some() || topic.partitions().is_empty() {
            return Ok(None);
        }
        let replication = topic
            .partitions()
            .iter()
            .map(|p| p.replicas().len() as i32)
            .min()
            .unwrap_or(0);
        Ok(Some((topic.partitions().len() as u32, replication)))
    }

    /// Queues every vote with the producer; the futures resolve as the broker acknowledges.
    /// Each comes with its partition's acknowledged end at the time it was queued: the vote
    /// can only land after that.
    fn enqueue(&self, entries: &[E]) -> Result<Vec<Pending<E>>, IngestError> {
        let producer = self
            .producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut pending = Vec::with_capacity(entries.len());
        let mut payload = Vec::new();
        for logged in entries {
            let partition = logged.partition(self.config.partitions);
            let floor = self.acked_end(partition);
            let key = logged.key();
            payload.clear();
            logged.encode_into(&mut payload);
            let mac = self.signer.sign(partition, &payload);
            let mut record = FutureRecord::to(&self.config.topic)
                .partition(partition as i32)
                .key(&key[..])
                .payload(&payload[..])
                .headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: MAC_HEADER,
                    value: Some(&mac[..]),
                }));
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(Pending {
                            delivery,
                            partition,
                            floor,
                            logged: logged.clone(),
                        });
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((error, _)) => {
                        self.renew_producer(&error);
                        return Err(IngestError::Kafka {
                            reason: format!("producing a {} entry: {error}", E::KIND),
                        });
                    }
                }
            }
        }
        Ok(pending)
    }

    async fn delivered(&self, pending: Vec<Pending<E>>) -> Result<Vec<Position>, IngestError> {
        let mut positions = Vec::with_capacity(pending.len());
        let (deliveries, about): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .map(|p| (p.delivery, (p.partition, p.floor, p.logged)))
            .unzip();
        for (outcome, (partition, floor, logged)) in futures_util::future::join_all(deliveries)
            .await
            .into_iter()
            .zip(about)
        {
            let delivery = outcome
                .map_err(|_| IngestError::Kafka {
                    reason: "the producer shut down before the broker answered".into(),
                })?
                .map_err(|(error, _)| {
                    self.renew_producer(&error);
                    IngestError::Kafka {
                        reason: format!("the broker did not take a {} entry: {error}", E::KIND),
                    }
                })?;
            let position = match u64::try_from(delivery.offset) {
                Ok(offset) => Position { partition, offset },
                // A retry the broker recognised as a duplicate (after a reconnect) is
                // acknowledged without an offset: find where the first attempt landed.
                Err(_) => self.locate(partition, floor, &logged)?,
            };
            self.note_acked(position);
            positions.push(position);
        }
        Ok(positions)
    }

    /// After a failed append: starts a new producer session if this one may be finished,
    /// i.e. librdkafka declared it fatal, the broker refused an append with an error that
    /// says it lost track of the session, or an append timed out (an idempotent session
    /// whose appends timed out must be reset with the broker). Seen with tansu restarted
    /// after kill -9: the old session's appends kept timing out, then every one got
    /// UNKNOWN_SERVER_ERROR, while a new session's were taken. Appends in flight on the old
    /// session fail and are not acknowledged; their votes may still be in the topic, which
    /// the tally counts once by vote id.
    fn renew_producer(&self, error: &KafkaError) {
        let current = self
            .producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let fatal = current.client().fatal_error();
        let session_lost = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Unknown
                    | RDKafkaErrorCode::MessageTimedOut
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fatal
            )
        );
        if fatal.is_none() && !session_lost {
            return;
        }
        let mut renewed = self
            .producer_renewed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if renewed.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        match new_producer(&self.config) {
            Ok(producer) => {
                tracing::warn!(
                    topic = %self.config.topic,
                    %error,
                    fatal = ?fatal,
                    "the broker stopped taking this producer's appends; starting a new producer"
                );
                *self
                    .producer
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = producer;
                *renewed = Some(Instant::now());
            }
            Err(error) => {
                tracing::warn!(%error, "could not start a new producer; keeping the old one");
            }
        }
    }

    /// Where `logged` is in `partition`, at or after `floor`.
    fn locate(&self, partition: u32, floor: u64, logged: &E) -> Result<Position, IngestError> {
        let mut reader = self.reader_at(partition, floor)?;
        let mut found = None;
        self.drain(&mut reader, partition, usize::MAX, |message| {
            if found.is_none()
                && E::decode(message.payload().unwrap_or_default()).is_ok_and(|e| e == *logged)
            {
                found = Some(Position {
                    partition,
                    offset: message.offset() as u64,
                });
            }
            Ok(())
        })?;
        found.ok_or_else(|| IngestError::Kafka {
            reason: format!(
                "the broker acknowledged a {} entry without an offset, and it is not in \
                 partition {partition} from offset {floor}",
                E::KIND
            ),
        })
    }

    fn acked_end(&self, partition: u32) -> u64 {
        self.acked_ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    fn note_acked(&self, position: Position) {
        let mut ends = self
            .acked_ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let end = ends.entry(position.partition).or_insert(0);
        *end = (*end).max(position.offset + 1);
    }

    fn check_partition(&self, partition: u32) -> Result<(), IngestError> {
        IngestError::unless_partition_exists(partition, self.config.partitions)
    }
}

/// An idempotent producer whose appends are acknowledged by every in-sync replica.
fn new_producer(config: &KafkaConfig) -> Result<FutureProducer, IngestError> {
    client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", config.timeout.as_millis().to_string())
        .create()
        .map_err(kafka_error("creating the producer"))
}

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("socket.timeout.ms", config.timeout.as_millis().to_string());
    for (key, value) in &config.security {
        client.set(key, value);
    }
    client
}

impl<E: LogEntry> EntryLog<E> for KafkaEntryLog<E> {
    fn partitions(&self) -> u32 {
        self.config.partitions
    }

    fn append(&self, entries: &[E]) -> Result<Vec<Position>, IngestError> {
        let pending = self.enqueue(entries)?;
        futures_executor::block_on(self.delivered(pending))
    }

    /// Resolves once the broker acknowledged every entry with every in-sync replica.
    fn append_async<'a>(&'a self, entries: &'a [E]) -> AppendFuture<'a> {
        Box::pin(async move {
            let pending = self.enqueue(entries)?;
            self.delivered(pending).await
        })
    }

    fn read_entries(&self, partition: u32, from: u64, max: usize) -> EntriesRead<E> {
        Ok(self.read_on(partition, from, max)?.records)
    }

    /// Refused records are not in `records`, but `next` is past them.
    fn read_batch(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadBatch<E::Record>, IngestError> {
        let batch = self.read_on(partition, from, max)?;
        Ok(ReadBatch {
            records: batch.records.into_iter().map(E::Record::from).collect(),
            next: batch.next,
        })
    }

    /// The end as of the broker's latest fetch answer: every offset below it is durable (a
    /// lower bound while appends go on). Found by reading to the partition's end rather than
    /// asking for the latest offset, because tansu answers that request with a wrong
    /// number (checked: 1 for a partition holding 48 records).
    fn end_offset(&self, partition: u32) -> Result<u64, IngestError> {
        self.check_partition(partition)?;
        // A fresh consumer from the last end found: one that reached the end before only
        // reports what it has already fetched, which may lag the broker (seen in tests), and
        // the end must include every append acknowledged before this call.
        let mut ends = self
            .known_ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let from = ends.get(&partition).copied().unwrap_or(0);
        let mut probe = self.reader_at(partition, from)?;
        let result = self.drain(&mut probe, partition, usize::MAX, |_| Ok(()));
        let end = probe.next;
        ends.insert(partition, end);
        result.map(|()| end)
    }

    fn dead_letters(&self) -> u64 {
        self.dead_letters_written.load(Ordering::Relaxed)
    }
}

impl<E: LogEntry> KafkaEntryLog<E> {
    /// Records this log's reads refused: dead-lettered, or skipped as dead-lettered before
    /// (or by a reader that does not write dead letters).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Up to `max` records of `partition` from `from`: the accepted ones, and the offset
    /// after the last record read, accepted or refused. The refused ones are in the
    /// dead-letter topic (acknowledged) before the answer goes past them; if a dead letter
    /// is not taken, the read fails transiently and the next one starts again at `from`
    /// (the letters of this batch that were taken may then be written twice).
    fn read_on(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadBatch<(Position, E)>, IngestError> {
        self.check_partition(partition)?;
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reader = match readers.remove(&partition) {
            Some(reader) if reader.next == from => reader,
            _ => self.reader_at(partition, from)?,
        };
        let mut records = Vec::new();
        let mut letters = Vec::new();
        let mut next = reader.next;
        let mut passed = self.passed.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.drain(&mut reader, partition, max, |message| {
            let offset = message.offset() as u64;
            let position = Position { partition, offset };
            match self.accept(message, partition) {
                Ok(entry) => records.push((position, entry)),
                Err((reason, detail)) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    if self.config.write_dead_letters && !passed.covers(partition, offset) {
                        let delivery = self.send_dead_letter(message, position, reason)?;
                        letters.push((delivery, position, reason, detail));
                    }
                }
            }
            next = offset + 1;
            Ok(())
        });
        // The letters are produced as the read meets them and waited for together: a flood
        // of bad records costs one round trip per read, not one per record.
        let taken = self.dead_letters_taken(letters);
        // After an error the reader is dropped: its consumer has fetched past where the next
        // read must start.
        result?;
        taken?;
        if next > from {
            passed.note(partition, from, next);
        }
        if !reader.before_gap {
            readers.insert(partition, reader);
        }
        Ok(ReadBatch { records, next })
    }

    /// The entry `message` holds, if it decodes, passes its own checks and carries this
    /// log's signature for it in this topic and partition; else why not.
    fn accept(
        &self,
        message: &BorrowedMessage<'_>,
        partition: u32,
    ) -> Result<E, (DeadLetterReason, String)> {
        let value = message.payload().unwrap_or_default();
        let entry = E::decode(value).map_err(|e| {
            (
                DeadLetterReason::Undecodable,
                format!("{} bytes, not a {} entry: {e}", value.len(), E::KIND),
            )
        })?;
        entry
            .validate_alone()
            .map_err(|e| (DeadLetterReason::Invalid, e))?;
        // An entry outside its key's partition needs no check of its own: the signature
        // covers the partition, and Canopy signs entries for their own partition only.
        let mac = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == MAC_HEADER)
                .map(|header| header.value.unwrap_or_default())
        });
        match mac {
            None => Err((DeadLetterReason::Unsigned, "no signature".into())),
            Some(mac) if self.signer.verify(partition, value, mac) => Ok(entry),
            Some(_) => Err((
                DeadLetterReason::BadSignature,
                "the signature is not the log key's for this record here".into(),
            )),
        }
    }

    /// Waits for the broker to take every dead letter of a read; logs and counts them.
    fn dead_letters_taken(
        &self,
        letters: Vec<(DeliveryFuture, Position, DeadLetterReason, String)>,
    ) -> Result<(), IngestError> {
        let mut failure = None;
        for (delivery, Position { partition, offset }, reason, detail) in letters {
            let outcome = match futures_executor::block_on(delivery) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => {
                    self.renew_producer(&error);
                    Err(format!("the broker did not take it: {error}"))
                }
                Err(_) => Err("the producer shut down before the broker took it".into()),
            };
            match outcome {
                Ok(()) => {
                    self.dead_letters_written.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        topic = %self.config.topic,
                        reason = %reason.code(),
                        partition,
                        offset,
                        detail,
                        "refused a record of the {} log; it is in the dead-letter topic",
                        E::KIND
                    );
                }
                Err(why) => {
                    failure.get_or_insert(IngestError::Kafka {
                        reason: format!(
                            "the dead letter of partition {partition}, offset {offset} was not \
                             written ({why}); the read waits for it"
                        ),
                    });
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Hands a refused record, key and value as received, to the producer for the
    /// dead-letter topic (made first if it is missing and this log may create topics).
    fn send_dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        position: Position,
        reason: DeadLetterReason,
    ) -> Result<DeliveryFuture, IngestError> {
        let topic = self.config.dead_letter_topic();
        if !self.dead_letter_topic_ready.load(Ordering::Acquire) {
            let found = match self.topic_layout(&topic)? {
                None if self.config.create_topic => self.create_topic(&topic, 1)?,
                found => found,
            };
            if found.is_none() {
                return Err(IngestError::Kafka {
                    reason: format!(
                        "the dead-letter topic {topic} does not exist (and creating it is not \
                         allowed); the read waits for it"
                    ),
                });
            }
            self.dead_letter_topic_ready.store(true, Ordering::Release);
        }
        let (partition, offset) = (position.partition.to_string(), position.offset.to_string());
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: REASON_HEADER,
                value: Some(reason.code()),
            })
            .insert(Header {
                key: PARTITION_HEADER,
                value: Some(&partition),
            })
            .insert(Header {
                key: OFFSET_HEADER,
                value: Some(&offset),
            });
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
            .partition(0)
            .payload(message.payload().unwrap_or_default())
            .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        let producer = self
            .producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => {
                    self.renew_producer(&error);
                    return Err(IngestError::Kafka {
                        reason: format!("producing a dead letter to {topic}: {error}"),
                    });
                }
            }
        }
    }

    /// Every record of this log's dead-letter topic, oldest first (none if it does not
    /// exist): for tests and operators.
    pub fn read_dead_letters(&self) -> Result<Vec<DeadLetter>, IngestError> {
        let topic = self.config.dead_letter_topic();
        if self.topic_layout(&topic)?.is_none() {
            return Ok(Vec::new());
        }
        let mut reader = self.reader_of(&topic, 0, 0)?;
        let mut letters = Vec::new();
        self.drain(&mut reader, 0, usize::MAX, |message| {
            let header = |name: &str| {
                message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|header| header.key == name)
                        .and_then(|header| header.value)
                        .map(|value| String::from_utf8_lossy(value).into_owned())
                })
            };
            let number = |name: &str| header(name).and_then(|text| text.parse().ok());
            letters.push(DeadLetter {
                reason: header(REASON_HEADER).unwrap_or_default(),
                partition: number(PARTITION_HEADER).unwrap_or(u64::MAX) as u32,
                offset: number(OFFSET_HEADER).unwrap_or(u64::MAX),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().unwrap_or_default().to_vec(),
            });
            Ok(())
        })?;
        Ok(letters)
    }
}

impl<E: LogEntry> KafkaEntryLog<E> {
    fn reader_at(&self, partition: u32, from: u64) -> Result<PartitionReader, IngestError> {
        self.reader_of(&self.config.topic, partition, from)
    }

    fn reader_of(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
    ) -> Result<PartitionReader, IngestError> {
        let consumer: BaseConsumer = client_config(&self.config)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_uncommitted")
            .set("group.id", "canopy-reader")
            // A fetch at the end of a partition waits at most this long for new records
            // (librdkafka's default, 500 ms, is straight added to the time a vote takes to
            // show in results: measured by `canopy-bench kafka`).
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(kafka_error("creating a consumer"))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Offset(from as i64))
            .map_err(kafka_error("assigning a partition"))?;
        consumer
            .assign(&assignment)
            .map_err(kafka_error("assigning a partition"))?;
        Ok(PartitionReader {
            consumer,
            next: from,
            at_end: false,
            before_gap: false,
        })
    }

    /// Hands `reader`'s records to `take`, up to `max`, until the partition's end. A reader
    /// that reached the end before only takes what has already arrived, so polling an idle
    /// partition costs no wait. A record `take` fails on is not passed: `reader.next` stays
    /// at it.
    /// Whether the gap from `missing` to `found` in `partition` has been seen for the log's
    /// timeout; remembers when it was first seen.
    fn gap_has_lasted(&self, partition: u32, missing: u64, found: u64) -> bool {
        let mut gaps = self.gaps.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        let seen = gaps.entry(partition).or_insert((missing, now));
        if seen.0 != missing {
            *seen = (missing, now);
        }
        let lasted = now.duration_since(seen.1) >= self.config.timeout;
        if lasted {
            tracing::warn!(
                partition,
                missing,
                found,
                "offsets {missing}..{found} never appeared; reading on past them"
            );
            gaps.remove(&partition);
        }
        lasted
    }

    fn drain(
        &self,
        reader: &mut PartitionReader,
        partition: u32,
        max: usize,
        mut take: impl FnMut(&BorrowedMessage<'_>) -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        let deadline = std::time::Instant::now() + self.config.timeout;
        let mut taken = 0usize;
        while taken < max {
            let wait = if reader.at_end {
                Duration::ZERO
            } else {
                Duration::from_millis(50)
            };
            let Some(message) = reader.consumer.poll(wait) else {
                if reader.at_end {
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    return Err(IngestError::Kafka {
                        reason: format!(
                            "partition {partition} did not answer from offset {} within {:?}",
                            reader.next, self.config.timeout
                        ),
                    });
                }
                continue;
            };
            let message = match message {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(_)) => {
                    reader.at_end = true;
                    return Ok(());
                }
                Err(error) => {
                    return Err(IngestError::Kafka {
                        reason: format!("reading partition {partition}: {error}"),
                    });
                }
            };
            let offset = message.offset() as u64;
            if offset < reader.next {
                continue;
            }
            // Offsets are dense in Canopy's topics (no compaction, no transactions), but a
            // fetch under concurrent producers has been seen to answer past offsets the
            // broker had assigned and not yet shown (tansu). Skipping them would lose
            // acknowledged votes: stop before the gap and ask again, unless it has lasted
            // the log's timeout (then the records are gone, and the gap is logged).
            if offset > reader.next && !self.gap_has_lasted(partition, reader.next, offset) {
                reader.before_gap = true;
                return Ok(());
            }
            take(&message)?;
            reader.next = offset + 1;
            taken += 1;
        }
        Ok(())
    }
}
