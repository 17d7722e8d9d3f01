/* NATS subjects: the bus contract between services. Payloads are the
 * loom.v1 protobuf messages named beside each. */
#ifndef LOOM_SUBJECTS_H
#define LOOM_SUBJECTS_H

/* agent -> scheduler, request NodeRegister, reply Ack */
#define LOOM_SUBJ_NODE_REGISTER "loom.node.register"
/* agent -> scheduler, publish NodeHeartbeat */
#define LOOM_SUBJ_NODE_HEARTBEAT "loom.node.heartbeat"
/* scheduler -> agent <node>, publish (empty): a heartbeat matched no node row,
 * register again */
#define LOOM_SUBJ_AGENT_REREGISTER_FMT "loom.agent.%s.reregister"
/* scheduler -> agent <node>, request InstanceAssign, reply Ack */
#define LOOM_SUBJ_AGENT_ASSIGN_FMT "loom.agent.%s.assign"
/* scheduler -> agent <node>, request InstanceStop, reply Ack */
#define LOOM_SUBJ_AGENT_STOP_FMT "loom.agent.%s.stop"
/* activator -> agent <node>, request InstanceSpecialize, reply Ack */
#define LOOM_SUBJ_AGENT_SPECIALIZE_FMT "loom.agent.%s.specialize"
/* agent -> scheduler (queue group "scheduler"), request InstanceReport, reply Ack */
#define LOOM_SUBJ_INSTANCE_REPORT "loom.instance.report"
#define LOOM_SUBJ_INSTANCE_REPORTS "loom.instance.reports" /* many at once */
/* api/activator -> scheduler, publish (empty): new work, place now (also: a
 * stem cell was claimed, refill the pools) */
#define LOOM_SUBJ_SCHED_WAKE "loom.sched.wake"
/* scheduler -> activator, publish (empty): a stem cell of runtime <r> runs
 * and is free; calls waiting for one claim it now (the runtime's name may
 * hold dots: everything after the prefix) */
#define LOOM_SUBJ_STEM_READY_PREFIX "loom.stem."
/* activator -> scheduler, publish ScaleDecision */
#define LOOM_SUBJ_SCALE_DECISION "loom.scale.decision"
/* scheduler -> activator, publish (empty): an app's instances changed */
#define LOOM_SUBJ_APP_CHANGED_FMT "loom.app.%s.%s"
/* agent -> metering, JetStream stream LOOM_USAGE, UsageSample */
#define LOOM_STREAM_USAGE "LOOM_USAGE"
#define LOOM_SUBJ_USAGE_FMT "loom.usage.%s"
/* metering -> agent <node>, publish UsageCommitted after COMMIT */
#define LOOM_SUBJ_METERED_FMT "loom.metered.%s"
/* logshipper -> followers, publish LogBatch on loom.logs.<project>.<instance> */
#define LOOM_SUBJ_LOGS_FMT "loom.logs.%s.%s"
/* api -> anyone, CloudEvents JSON on loom.events.<project>.<kind> */
#define LOOM_SUBJ_EVENTS_FMT "loom.events.%s.%s"

/* api -> builder, publish (empty): a build run is pending or asked to
 * cancel; builders also look on a timer */
#define LOOM_SUBJ_BUILD_WAKE "loom.build.wake"

/* Queue groups */
#define LOOM_QUEUE_SCHEDULER "scheduler"

#endif
