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

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use std::marker::PhantomData;

use canopy_schemas::{LoggedVote, SensorReading};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::{AppendFuture, EntriesRead, EntryLog, IngestError, LogEntry, Position};

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
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            partitions: 8,
            replication: 1,
            min_insync_replicas: 1,
            create_topic: true,
            timeout: Duration::from_secs(10),
        }
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
}

/// The vote log on Kafka: votes keyed by decision id.
pub type KafkaLog = KafkaEntryLog<LoggedVote>;
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
    /// Per partition, one past the highest offset an append of this log was acknowledged at.
    acked_ends: Mutex<HashMap<u32, u64>>,
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
            config,
            producer: RwLock::new(producer),
            producer_renewed: Mutex::new(None),
            metadata,
            readers: Mutex::new(HashMap::new()),
            known_ends: Mutex::new(HashMap::new()),
            acked_ends: Mutex::new(HashMap::new()),
            entries: PhantomData,
        };
        log.ensure_topic()?;
        Ok(log)
    }

    fn ensure_topic(&self) -> Result<(), IngestError> {
        let config = &self.config;
        let mut found = self.topic_layout()?;
        if found.is_none() && config.create_topic {
            let admin: AdminClient<DefaultClientContext> = client_config(config)
                .create()
                .map_err(kafka_error("creating the admin client"))?;
            let min_insync = config.min_insync_replicas.to_string();
            let topic = NewTopic::new(
                &config.topic,
                config.partitions as i32,
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
            while found.is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                found = self.topic_layout()?;
            }
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

    /// (partitions, smallest replica count) of the topic, or None if it does not exist.
    fn topic_layout(&self) -> Result<Option<(u32, i32)>, IngestError> {
        let metadata = self
            .metadata
            .fetch_metadata(Some(&self.config.topic), self.config.timeout)
            .map_err(kafka_error("reading the topic's metadata"))?;
        let Some(topic) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.config.topic)
        else {
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
            let mut record = FutureRecord::to(&self.config.topic)
                .partition(partition as i32)
                .key(&key[..])
                .payload(&payload[..]);
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
        self.drain(&mut reader, partition, usize::MAX, |(position, entry)| {
            if found.is_none() && entry == *logged {
                found = Some(position);
            }
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
        self.check_partition(partition)?;
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reader = match readers.remove(&partition) {
            Some(reader) if reader.next == from => reader,
            _ => self.reader_at(partition, from)?,
        };
        let mut out = Vec::new();
        let result = self.drain(&mut reader, partition, max, |record| out.push(record));
        readers.insert(partition, reader);
        result.map(|()| out)
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
        let result = self.drain(&mut probe, partition, usize::MAX, |_| {});
        let end = probe.next;
        ends.insert(partition, end);
        result.map(|()| end)
    }
}

impl<E: LogEntry> KafkaEntryLog<E> {
    fn reader_at(&self, partition: u32, from: u64) -> Result<PartitionReader, IngestError> {
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
            .add_partition_offset(
                &self.config.topic,
                partition as i32,
                Offset::Offset(from as i64),
            )
            .map_err(kafka_error("assigning a partition"))?;
        consumer
            .assign(&assignment)
            .map_err(kafka_error("assigning a partition"))?;
        Ok(PartitionReader {
            consumer,
            next: from,
            at_end: false,
        })
    }

    /// Hands `reader`'s records to `take`, up to `max`, until the partition's end. A reader
    /// that reached the end before only takes what has already arrived, so polling an idle
    /// partition costs no wait.
    fn drain(
        &self,
        reader: &mut PartitionReader,
        partition: u32,
        max: usize,
        mut take: impl FnMut((Position, E)),
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
            let payload = message.payload().unwrap_or_default();
            let entry = E::decode(payload).map_err(|e| IngestError::KafkaRecord {
                partition,
                offset,
                reason: format!("{} bytes, not a {} entry: {e}", payload.len(), E::KIND),
            })?;
            take((Position { partition, offset }, entry));
            reader.next = offset + 1;
            taken += 1;
        }
        Ok(())
    }
}
