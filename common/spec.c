/* The field table of every kind, and the engine it drives: validation,
 * defaults, merge, decode, columns and schemas (see spec.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arrayspec.h"
#include "cleanup.h"
#include "json.h"
#include "quantity.h"
#include "spec_int.h"

#define O(member) offsetof(struct loom_spec, member)
#define GB 1000000000LL

static const char *const run_modes[] = {"task", "daemon", NULL};
static const char *const placements[] = {"binpack", "spread", NULL};
static const char *const visibilities[] = {"public", "private", "project", NULL};
static const char *const run_cpus[] = {"0.125", "0.25", "0.5", "1",  "2", "4",
                                       "6",     "8",    "10",  "12", NULL};
static const char *const function_cpus[] = {"0.125", "0.25", "0.5", "1", NULL};
static const char *const source_types[] = {"local", "git", NULL};
static const char *const strategies[] = {"dockerfile", "buildpacks", NULL};
static const char *const build_sizes[] = {"small", "medium", "large", "xlarge", NULL};
static const char *const output_types[] = {"image", "bundle", NULL};

/* In the order a body's fields are checked, so that the first error a user
 * sees is the first field that is wrong. */
const struct loom_field loom_spec_table[] = {
    /* ---- what runs: apps, jobs and runs ---- */
    {.name = "image_reference",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_RUNS,
     .max = 512,
     .check = loom_spec_check_image,
     .offset = O(image),
     .flag = "image",
     .metavar = "REF",
     .help = "the image to run: host[:port]/repo[:tag] or ...@sha256:<64 hex>"},
    {.name = "run_commands",
     .type = LOOM_FT_STRINGS,
     .kinds = LOOM_K_RUNS,
     .min = 64,
     .max = 4096,
     .def_kind = LOOM_DEF_VALUE,
     .def = "[]",
     .offset = O(commands),
     .flag = "command",
     .metavar = "ARG",
     .help = "replaces the entrypoint of the image (one flag per word; --cmd TEXT is "
             "/bin/sh -c TEXT)"},
    {.name = "run_arguments",
     .type = LOOM_FT_STRINGS,
     .kinds = LOOM_K_RUNS,
     .min = 64,
     .max = 4096,
     .def_kind = LOOM_DEF_VALUE,
     .def = "[]",
     .offset = O(arguments),
     .flag = "arg",
     .metavar = "ARG",
     .help = "replaces the cmd of the image (one flag per word)"},
    {.name = "run_env_variables",
     .type = LOOM_FT_OBJECT,
     .kinds = LOOM_K_RUNS | LOOM_K_FUNCTION,
     .def_kind = LOOM_DEF_VALUE,
     .def = "[]",
     .check = loom_spec_check_env,
     .offset = O(env),
     .flag = "env",
     .metavar = "NAME=VALUE",
     .help = "environment variables: literals, or keys of secrets and config maps",
     .schema = "{'type':'array','maxItems':100,'items':{'$ref':'#/components/schemas/EnvVar'}}"},
    {.name = "run_volume_mounts",
     .type = LOOM_FT_OBJECT,
     .kinds = LOOM_K_RUNS,
     .def_kind = LOOM_DEF_VALUE,
     .def = "[]",
     .check = loom_spec_check_mounts,
     .offset = O(mounts),
     .flag = "mount-secret",
     .metavar = "/DIR=SECRET",
     .help = "secrets and config maps mounted as read-only directories of files",
     .schema = "{'type':'array','maxItems':20,'items':{'$ref':'#/components/schemas/"
               "VolumeMount'}}"},
    {.name = "image_secret",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_RUNS,
     .max = 63,
     .check = loom_spec_check_reference,
     .offset = O(image_secret),
     .flag = "registry-secret",
     .metavar = "SECRET",
     .help = "a secret of format registry used to pull the image when its server is the image "
             "host (need not exist at create time)"},
    {.name = "scale_cpu_limit",
     .type = LOOM_FT_CPU,
     .kinds = LOOM_K_RUNS,
     .min = 1,
     .max = 64000,
     .def_kind = LOOM_DEF_IMPLIED,
     .def = "\"1\"",
     .choices = run_cpus,
     .check = loom_spec_check_choice,
     .offset = O(cpu_millis),
     .column = "cpu_millis",
     .flag = "cpu",
     .metavar = "VCPU",
     .help = "vCPU (also written as 125m or .125; stored in this form). With "
             "scale_memory_limit one of the Code Engine combinations: 2, 4 or 8 GB per vCPU, "
             "at most 48G. Given alone, memory is 4 GB per vCPU"},
    {.name = "scale_memory_limit",
     .type = LOOM_FT_SIZE,
     .kinds = LOOM_K_RUNS,
     .min = 1,
     .max = 48 * GB,
     .def_kind = LOOM_DEF_IMPLIED,
     .def = "\"4G\"",
     .offset = O(memory_bytes),
     .column = "memory_bytes",
     .flag = "memory",
     .metavar = "SIZE",
     .help = "2, 4 or 8 GB per vCPU; equal in decimal (0.25G = 250M) or binary (256M = 256Mi = "
             "0.25Gi) units. Given alone, the vCPU is a quarter of it (else a half, else an "
             "eighth)",
     .schema = "{'type':'string','pattern':'^[0-9]+(\\\\.[0-9]{1,3})?(M|G|Mi|Gi)$'}"},
    {.name = "scale_ephemeral_storage_limit",
     .type = LOOM_FT_SIZE,
     .kinds = LOOM_K_RUNS,
     .min = 1,
     .max = 48 * GB,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"400M\"",
     .offset = O(ephemeral_bytes),
     .column = "ephemeral_bytes",
     .flag = "ephemeral-storage",
     .metavar = "SIZE",
     .help = "writable container storage, M/G/Mi/Gi, at most 48G",
     .schema = "{'type':'string'}"},
    {.name = "scale_gpus",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_RUNS,
     .min = 0,
     .max = 64,
     .def_kind = LOOM_DEF_IMPLIED,
     .def = "0",
     .offset = O(gpus),
     .column = "gpus",
     .flag = "gpus",
     .metavar = "N",
     .help = "GPUs per instance"},
    {.name = "scale_gpu_model",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_RUNS,
     .max = 64,
     .check = loom_spec_check_gpu_model,
     .offset = O(gpu_model),
     .flag = "gpu-model",
     .metavar = "MODEL",
     .help = "the GPU model a node must have (any when absent)",
     .schema = "{'type':'string','pattern':'^[-._a-zA-Z0-9]*$'}"},

    /* ---- jobs and job runs ---- */
    {.name = "scale_array_spec",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_JOB,
     .max = 65536,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"0\"",
     .check = loom_spec_check_array,
     .offset = O(array_spec),
     .flag = "array-indices",
     .metavar = "INDICES",
     .help = "indices such as 0-9,20 (0 to 9999999); stored in canonical form"},
    /* a run's indices are parsed once, by loom_spec_jobrun, into its ranges */
    {.name = "scale_array_spec",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_JOBRUN,
     .max = 65536,
     .offset = O(array_spec),
     .flag = "array-indices",
     .metavar = "INDICES",
     .help = "indices such as 0-9,20 (0 to 9999999; default 0, or the job's); answered in "
             "canonical form"},
    {.name = "scale_retry_limit",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_JOBS,
     .min = 0,
     .max = 5,
     .def_kind = LOOM_DEF_VALUE,
     .def = "3",
     .offset = O(retry_limit),
     .flag = "retrylimit",
     .metavar = "N",
     .help = "retries of a failed index"},
    {.name = "scale_max_execution_time",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_JOBS,
     .min = 1,
     .max = 86400,
     .def_kind = LOOM_DEF_VALUE,
     .def = "7200",
     .offset = O(max_execution_time),
     .flag = "maxexecutiontime",
     .metavar = "SECONDS",
     .help = "seconds per index attempt"},
    {.name = "parallelism",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_JOBS,
     .min = 0,
     .max = LOOM_ARRAY_MAX_COUNT,
     .def_kind = LOOM_DEF_VALUE,
     .def = "0",
     .offset = O(parallelism),
     .flag = "parallelism",
     .metavar = "N",
     .help = "indices running at once; 0 = unlimited"},
    {.name = "scale_nodes",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_JOBS,
     .min = 1,
     .max = 1000,
     .def_kind = LOOM_DEF_IMPLIED,
     .def = "1",
     .offset = O(nodes),
     .flag = "nodes",
     .metavar = "N",
     .help = "more than 1: each index is a gang of this many instances placed all together"},
    {.name = "priority",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_JOBS,
     .min = 0,
     .max = 100,
     .def_kind = LOOM_DEF_IMPLIED,
     .def = "50",
     .offset = O(priority),
     .column = "priority",
     .flag = "priority",
     .metavar = "N",
     .help = "higher runs are placed first"},
    {.name = "gang_timeout",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_JOBS,
     .min = 1,
     .max = 86400,
     .def_kind = LOOM_DEF_VALUE,
     .def = "300",
     .offset = O(gang_timeout),
     .flag = "gang-timeout",
     .metavar = "SECONDS",
     .help = "seconds a gang may wait to be placed whole before the index fails with that "
             "reason"},
    {.name = "run_mode",
     .type = LOOM_FT_ENUM,
     .kinds = LOOM_K_JOBS,
     .choices = run_modes,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"task\"",
     .offset = O(run_mode),
     .flag = "mode",
     .metavar = "MODE",
     .help = "daemon: restarted whenever it ends; takes no retry limit or execution time"},
    {.name = "placement",
     .type = LOOM_FT_ENUM,
     .kinds = LOOM_K_JOBS,
     .choices = placements,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"binpack\"",
     .offset = O(placement),
     .flag = "placement",
     .metavar = "HOW",
     .help = "binpack: the fullest node that fits; spread: the emptiest"},
    {.name = "node_selector",
     .type = LOOM_FT_OBJECT,
     .kinds = LOOM_K_JOBS,
     .def_kind = LOOM_DEF_VALUE,
     .def = "{}",
     .check = loom_spec_check_selector,
     .offset = O(node_selector),
     .flag = "node-selector",
     .metavar = "LABEL=VALUE",
     .help = "label: value pairs that every chosen node must have",
     .schema = "{'type':'object','maxProperties':32,'additionalProperties':{'type':'string',"
               "'pattern':'^[-._a-zA-Z0-9]{0,63}$'}}"},

    /* ---- apps ---- */
    {.name = "image_port",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_APP,
     .min = 1,
     .max = 65535,
     .def_kind = LOOM_DEF_VALUE,
     .def = "8080",
     .offset = O(port),
     .column = "port",
     .flag = "port",
     .metavar = "PORT",
     .help = "the port the app listens on (also in $PORT)"},
    {.name = "scale_min_instances",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_APP,
     .min = 0,
     .max = 1000,
     .def_kind = LOOM_DEF_VALUE,
     .def = "0",
     .offset = O(min_instances),
     .column = "min_instances",
     .flag = "min-scale",
     .metavar = "N",
     .help = "instances kept running when idle; 0 scales to zero"},
    {.name = "scale_max_instances",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_APP,
     .min = 1,
     .max = 1000,
     .def_kind = LOOM_DEF_VALUE,
     .def = "10",
     .offset = O(max_instances),
     .column = "max_instances",
     .flag = "max-scale",
     .metavar = "N",
     .help = "the most instances the autoscaler starts"},
    {.name = "scale_initial_instances",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_APP,
     .min = 0,
     .max = 1000,
     .def_kind = LOOM_DEF_FOLLOWS,
     .def = "scale_min_instances",
     .offset = O(initial_instances),
     .flag = "scale-initial-instances",
     .metavar = "N",
     .help = "instances a new revision (create, or an update that makes a new generation) "
             "starts with and keeps for the autoscaler stable window before it scales on load; "
             "at most scale_max_instances; default scale_min_instances"},
    {.name = "scale_concurrency",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_APP,
     .min = 1,
     .max = 1000,
     .def_kind = LOOM_DEF_VALUE,
     .def = "100",
     .offset = O(concurrency),
     .column = "concurrency",
     .flag = "concurrency",
     .metavar = "N",
     .help = "hard limit of requests in flight per instance; more wait at the activator "
             "(boundedly, then 503) and make the app scale up"},
    {.name = "scale_concurrency_target",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_APP,
     .min = 1,
     .max = 1000,
     .def_kind = LOOM_DEF_FOLLOWS,
     .def = "scale_concurrency",
     .offset = O(concurrency_target),
     .column = "target",
     .flag = "concurrency-target",
     .metavar = "N",
     .help = "what the autoscaler aims for: it runs ceil(concurrent requests / target) "
             "instances; at most scale_concurrency; default scale_concurrency"},
    {.name = "scale_down_delay",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_APP,
     .min = 0,
     .max = 3600,
     .def_kind = LOOM_DEF_VALUE,
     .def = "0",
     .offset = O(scale_down_delay),
     .flag = "scale-down-delay",
     .metavar = "SECONDS",
     .help = "seconds the autoscaler keeps a higher instance count after the load that "
             "justified it has gone (on top of its averaging window)"},
    {.name = "scale_request_timeout",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_APP,
     .min = 1,
     .max = 600,
     .def_kind = LOOM_DEF_VALUE,
     .def = "300",
     .offset = O(request_timeout),
     .flag = "request-timeout",
     .metavar = "SECONDS",
     .help = "seconds one request may take at an instance; a longer one gets 504 and its "
             "connection to the instance is closed"},
    {.name = "probe_readiness",
     .type = LOOM_FT_OBJECT,
     .kinds = LOOM_K_APP,
     .check = loom_spec_check_probe,
     .decode = loom_spec_decode_probe,
     .offset = O(readiness),
     .flag = "probe-ready",
     .metavar = "KEY=VALUE,...",
     .help = "when an instance takes requests: type=http|tcp, path, port, initial-delay, "
             "interval, timeout, failure-threshold",
     .schema = "{'$ref':'#/components/schemas/Probe'}"},
    {.name = "probe_liveness",
     .type = LOOM_FT_OBJECT,
     .kinds = LOOM_K_APP,
     .check = loom_spec_check_probe,
     .decode = loom_spec_decode_probe,
     .offset = O(liveness),
     .flag = "probe-live",
     .metavar = "KEY=VALUE,...",
     .help = "when an instance is restarted: the same keys as --probe-ready",
     .schema = "{'$ref':'#/components/schemas/Probe'}"},
    {.name = "visibility",
     .type = LOOM_FT_ENUM,
     .kinds = LOOM_K_APP | LOOM_K_FUNCTION,
     .choices = visibilities,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"public\"",
     .offset = O(visibility),
     .flag = "visibility",
     .metavar = "WHO",
     .help = "public: the URL answers on the activator's public listener (path and host name) "
             "and on its internal one. private: only on the internal listener "
             "(LOOM_ACTIVATOR_INTERNAL_ADDR, reachable from the platform network), 404 on the "
             "public one. project: only on the internal listener and only to callers whose "
             "source address is a running app instance of the same project, 404 to anyone else"},

    /* ---- functions ---- */
    {.name = "runtime",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_FUNCTION,
     .max = 63,
     .check = loom_spec_check_runtime,
     .offset = O(runtime),
     .flag = "runtime",
     .metavar = "RUNTIME",
     .help = "the language runtime, one of GET /v1/function_runtimes (python-3.11, nodejs-18, "
             "shell...)"},
    {.name = "code_reference",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_FUNCTION,
     .max = LOOM_SPEC_MAX_CODE_REFERENCE,
     .check = loom_spec_check_code,
     .offset = O(code_reference),
     .flag = "code-reference",
     .metavar = "DATA_URL",
     .help = "the code: a data: URL of one file (text/plain) or of a tar.gz bundle "
             "(application/gzip, base64), at most 512 KiB of code; answered as sha256:<hex>, "
             "the content it was stored under"},
    {.name = "code_main",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_FUNCTION,
     .max = 128,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"main\"",
     .check = loom_spec_check_identifier,
     .offset = O(code_main),
     .flag = "main",
     .metavar = "NAME",
     .help = "the function the runtime calls with the parameters"},
    {.name = "code_binary",
     .type = LOOM_FT_BOOL,
     .kinds = LOOM_K_FUNCTION,
     .def_kind = LOOM_DEF_VALUE,
     .def = "false",
     .offset = O(code_binary),
     .flag = "code-binary",
     .help = "the code is a bundle (set by the API from the data: URL's type)"},
    {.name = "scale_concurrency",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_FUNCTION,
     .min = 1,
     .max = 100,
     .def_kind = LOOM_DEF_VALUE,
     .def = "1",
     .offset = O(concurrency),
     .column = "concurrency",
     .flag = "concurrency",
     .metavar = "N",
     .help = "calls one instance serves at once; more start more instances"},
    {.name = "scale_cpu_limit",
     .type = LOOM_FT_CPU,
     .kinds = LOOM_K_FUNCTION,
     .min = 1,
     .max = 1000,
     .def_kind = LOOM_DEF_IMPLIED,
     .def = "\"0.5\"",
     .choices = function_cpus,
     .check = loom_spec_check_choice,
     .offset = O(cpu_millis),
     .column = "cpu_millis",
     .flag = "cpu",
     .metavar = "VCPU",
     .help = "vCPU of an instance; with scale_memory_limit one of Code Engine's function "
             "shapes, 4 GB per vCPU"},
    {.name = "scale_memory_limit",
     .type = LOOM_FT_SIZE,
     .kinds = LOOM_K_FUNCTION,
     .min = 1,
     .max = 4 * GB,
     .def_kind = LOOM_DEF_IMPLIED,
     .def = "\"2G\"",
     .offset = O(memory_bytes),
     .column = "memory_bytes",
     .flag = "memory",
     .metavar = "SIZE",
     .help = "memory of an instance: 4 GB per vCPU (0.5G, 1G, 2G or 4G)",
     .schema = "{'type':'string','pattern':'^[0-9]+(\\\\.[0-9]{1,3})?(M|G|Mi|Gi)$'}"},
    {.name = "scale_max_execution_time",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_FUNCTION,
     .min = 1,
     .max = 120,
     .def_kind = LOOM_DEF_VALUE,
     .def = "60",
     .offset = O(max_execution_time),
     .flag = "timeout",
     .metavar = "SECONDS",
     .help = "seconds one call may take; a longer one answers 504 and its instance is replaced"},
    {.name = "scale_down_delay",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_FUNCTION,
     .min = 0,
     .max = 3600,
     .def_kind = LOOM_DEF_VALUE,
     .def = "60",
     .offset = O(scale_down_delay),
     .flag = "scale-down-delay",
     .metavar = "SECONDS",
     .help = "seconds an idle instance is kept warm before it stops"},

    /* ---- builds and build runs (Code Engine's v2 names) ---- */
    {.name = "source_type",
     .type = LOOM_FT_ENUM,
     .kinds = LOOM_K_BUILDS,
     .choices = source_types,
     .offset = O(source_type),
     .flag = "source-type",
     .metavar = "TYPE",
     .help = "git: source_url is a repository; local: source_upload is an upload (POST "
             "uploads). Default: git when source_url is given, else local"},
    {.name = "source_url",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_BUILDS,
     .max = 2048,
     .check = loom_spec_check_git_url,
     .offset = O(source_url),
     .flag = "source",
     .metavar = "DIR|GIT_URL",
     .help = "the git repository (https://, http://, git://, ssh://, file:// or "
             "user@host:path); the CLI uploads a directory instead"},
    {.name = "source_upload",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_BUILDS,
     .max = 71,
     .check = loom_spec_check_digest,
     .offset = O(source_upload),
     .flag = "source-upload",
     .metavar = "DIGEST",
     .help = "sha256:<hex> of a tar.gz this project uploaded (source_type local)",
     .schema = "{'type':'string','pattern':'^sha256:[0-9a-f]{64}$'}"},
    {.name = "source_revision",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_BUILDS,
     .max = 256,
     .check = loom_spec_check_revision,
     .offset = O(source_revision),
     .flag = "commit",
     .metavar = "REV",
     .help = "the branch, tag or commit of a git source (default: the repository's HEAD)"},
    {.name = "source_context_dir",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_BUILDS,
     .max = 256,
     .check = loom_spec_check_relative_path,
     .offset = O(source_context_dir),
     .flag = "context-dir",
     .metavar = "DIR",
     .help = "the directory of the source to build (default: its top)"},
    {.name = "source_secret",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_BUILDS,
     .max = 63,
     .check = loom_spec_check_reference,
     .offset = O(source_secret),
     .flag = "git-repo-secret",
     .metavar = "SECRET",
     .help = "a secret with the git credentials (username and password, or ssh_key); never "
             "in logs, records or images"},
    {.name = "strategy_type",
     .type = LOOM_FT_ENUM,
     .kinds = LOOM_K_BUILDS,
     .choices = strategies,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"buildpacks\"",
     .offset = O(strategy_type),
     .flag = "strategy",
     .metavar = "STRATEGY",
     .help = "buildpacks: detected from the source (Node.js, Python, Go, Procfile, static "
             "site, script); dockerfile: built with buildah from strategy_spec_file"},
    {.name = "strategy_spec_file",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_BUILDS,
     .max = 256,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"Dockerfile\"",
     .check = loom_spec_check_relative_path,
     .offset = O(strategy_spec_file),
     .flag = "dockerfile",
     .metavar = "FILE",
     .help = "the Dockerfile, relative to source_context_dir"},
    {.name = "strategy_size",
     .type = LOOM_FT_ENUM,
     .kinds = LOOM_K_BUILDS,
     .choices = build_sizes,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"medium\"",
     .offset = O(strategy_size),
     .flag = "size",
     .metavar = "SIZE",
     .help = "what each build step gets: small 0.5 vCPU 2G, medium 1 vCPU 4G, large 2 vCPU 8G, "
             "xlarge 4 vCPU 16G"},
    {.name = "output_type",
     .type = LOOM_FT_ENUM,
     .kinds = LOOM_K_BUILDS,
     .choices = output_types,
     .def_kind = LOOM_DEF_VALUE,
     .def = "\"image\"",
     .offset = O(output_type),
     .flag = "output-type",
     .metavar = "TYPE",
     .help = "image: an OCI image pushed to output_image; bundle: a function's code bundle "
             "(the source with its dependencies installed, buildpacks only), stored as "
             "functions' code is and named by its digest"},
    {.name = "output_image",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_BUILDS,
     .max = 512,
     .check = loom_spec_check_output_image,
     .offset = O(output_image),
     .flag = "image",
     .metavar = "REF",
     .help = "where the image is pushed: host[:port]/repo[:tag], or repo[:tag] in the "
             "platform registry under the project (<registry>/<project>/repo); default "
             "<project>/<build name>:latest there"},
    {.name = "output_secret",
     .type = LOOM_FT_STRING,
     .kinds = LOOM_K_BUILDS,
     .max = 63,
     .check = loom_spec_check_reference,
     .offset = O(output_secret),
     .flag = "registry-secret",
     .metavar = "SECRET",
     .help = "a registry secret to push output_image with (none for the platform registry)"},
    {.name = "timeout",
     .type = LOOM_FT_INT,
     .kinds = LOOM_K_BUILDS,
     .min = 1,
     .max = 3600,
     .def_kind = LOOM_DEF_VALUE,
     .def = "600",
     .offset = O(build_timeout),
     .flag = "timeout",
     .metavar = "SECONDS",
     .help = "seconds the whole run may take; past it the run fails, saying so"},
};
const size_t loom_spec_table_len = LOOM_ARRAY_SIZE(loom_spec_table);

static const int64_t run_cpu_millis[] = {125, 250, 500, 1000, 2000, 4000, 6000, 8000, 10000, 12000};
static const int run_ratios[] = {4, 2, 8};
static const int64_t function_cpu_millis[] = {125, 250, 500, 1000};
static const int function_ratios[] = {4};

static const struct loom_shapes run_shapes = {
    run_cpu_millis,
    LOOM_ARRAY_SIZE(run_cpu_millis),
    run_ratios,
    LOOM_ARRAY_SIZE(run_ratios),
    48,
    "1",
    "4G",
    "2, 4 or 8",
    "0.5G, 1G, 2G, 4G, 8G, 16G, 32G or 48G",
};
static const struct loom_shapes function_shapes = {
    function_cpu_millis,
    LOOM_ARRAY_SIZE(function_cpu_millis),
    function_ratios,
    LOOM_ARRAY_SIZE(function_ratios),
    4,
    "0.5",
    "2G",
    "4",
    "0.5G, 1G, 2G or 4G",
};

static int check_app(json_t *spec, struct loom_err *err);
static int check_build(json_t *spec, struct loom_err *err);
static int check_buildrun(json_t *spec, struct loom_err *err);

static const struct kind_desc {
    const char *what;
    bool columns;                     /* its table has the normalised columns */
    const struct loom_shapes *shapes; /* NULL: no cpu and memory */
    const char *parent_field;         /* a run's member naming what it runs, or NULL */
    const char *required[3];          /* what a create must give */
    int (*check)(json_t *spec, struct loom_err *err); /* the whole spec, or NULL */
} kinds[LOOM_KIND_COUNT] = {
    [LOOM_KIND_JOB] = {"job", false, &run_shapes, NULL, {"image_reference"}, NULL},
    [LOOM_KIND_JOBRUN] = {"job run", true, &run_shapes, "job_name", {"image_reference"}, NULL},
    [LOOM_KIND_APP] = {"app", true, &run_shapes, NULL, {"image_reference"}, check_app},
    [LOOM_KIND_FUNCTION] =
        {"function", true, &function_shapes, NULL, {"runtime", "code_reference"}, NULL},
    [LOOM_KIND_BUILD] = {"build", false, NULL, NULL, {NULL}, check_build},
    [LOOM_KIND_BUILDRUN] = {"build run", false, NULL, "build_name", {NULL}, check_buildrun},
};

static const struct loom_build_resources build_resources[] = {
    [LOOM_SIZE_SMALL] = {500, 2 * GB, 1 * GB},
    [LOOM_SIZE_MEDIUM] = {1000, 4 * GB, 2 * GB},
    [LOOM_SIZE_LARGE] = {2000, 8 * GB, 4 * GB},
    [LOOM_SIZE_XLARGE] = {4000, 16 * GB, 8 * GB},
};

const struct loom_build_resources *loom_build_size_resources(enum loom_build_size s)
{
    return &build_resources[(unsigned)s <= LOOM_SIZE_XLARGE ? s : LOOM_SIZE_MEDIUM];
}

const char *loom_kind_what(enum loom_kind k)
{
    return k < LOOM_KIND_COUNT ? kinds[k].what : "resource";
}

const struct loom_field *loom_spec_field(enum loom_kind k, const char *name)
{
    for (size_t i = 0; i < loom_spec_table_len; i++)
        if (loom_field_in(&loom_spec_table[i], k) && strcmp(loom_spec_table[i].name, name) == 0)
            return &loom_spec_table[i];
    return NULL;
}

/* ---- built once: field name lists and parsed defaults ----------------------- */

static const char *names[LOOM_KIND_COUNT][LOOM_ARRAY_SIZE(loom_spec_table) + 3];
static json_t *defaults[LOOM_ARRAY_SIZE(loom_spec_table)];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void build_once(void)
{
    for (int k = 0; k < LOOM_KIND_COUNT; k++) {
        size_t n = 0;
        names[k][n++] = "name";
        if (kinds[k].parent_field)
            names[k][n++] = kinds[k].parent_field;
        for (size_t i = 0; i < loom_spec_table_len; i++)
            if (loom_field_in(&loom_spec_table[i], (enum loom_kind)k))
                names[k][n++] = loom_spec_table[i].name;
        names[k][n] = NULL;
    }
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        if (f->def_kind != LOOM_DEF_VALUE && f->def_kind != LOOM_DEF_IMPLIED)
            continue;
        defaults[i] = json_loads(f->def, JSON_DECODE_ANY, NULL);
        if (!defaults[i])
            abort(); /* a broken default in the table: the unit test catches it first */
    }
}

const char *const *loom_spec_field_names(enum loom_kind k)
{
    pthread_once(&once, build_once);
    return names[k];
}

/* ---- validation ----------------------------------------------------------------- */

static int check_enum(json_t *out, const struct loom_field *f, struct loom_err *err)
{
    const char *s = json_string_value(json_object_get(out, f->name));
    for (const char *const *c = f->choices; *c; c++)
        if (strcmp(s, *c) == 0)
            return 0;
    char list[128] = "";
    for (const char *const *c = f->choices; *c; c++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s\"%s\"",
                 c == f->choices ? ""
                 : c[1]          ? ", "
                                 : " or ",
                 *c);
    return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be %s, not \"%.32s\"", f->name, list,
                        s);
}

/* A size within the field's range: up to max in decimal units, and up to the
 * same number of binary units (48G or 48Gi). */
static int check_size(json_t *out, const struct loom_field *f, struct loom_err *err)
{
    const char *s = json_string_value(json_object_get(out, f->name));
    int64_t bytes;
    if (loom_size_parse(s, LOOM_SIZE_MEMORY, &bytes, err) < 0)
        return loom_err_wrap(err, "field \"%s\"", f->name);
    bool binary = s[strlen(s) - 1] == 'i';
    int64_t limit = binary ? f->max / GB * (1LL << 30) : f->max;
    char text[24];
    loom_size_format(limit, text, sizeof(text));
    if (bytes < f->min)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": \"%s\" is not a size above zero",
                            f->name, s);
    if (bytes > limit)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": \"%s\" is over %s", f->name, s, text);
    return 0;
}

static int check_cpu(json_t *out, const struct loom_field *f, struct loom_err *err)
{
    const char *s = json_string_value(json_object_get(out, f->name));
    int64_t millis;
    if (loom_cpu_parse(s, &millis, err) < 0)
        return loom_err_wrap(err, "field \"%s\"", f->name);
    if (millis < f->min || millis > f->max) {
        char lo[24], hi[24];
        loom_cpu_format(f->min, lo, sizeof(lo));
        loom_cpu_format(f->max, hi, sizeof(hi));
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": \"%s\" is not from %s to %s vCPU",
                            f->name, s, lo, hi);
    }
    /* the canonical text, which every reader gets ("0.125", not ".125") */
    char canon[24];
    loom_cpu_format(millis, canon, sizeof(canon));
    json_object_set_new(out, f->name, json_string(canon));
    return 0;
}

/* One present member of body into out, normalised. */
static int check_field(json_t *body, json_t *out, const struct loom_field *f, struct loom_err *err)
{
    const char *s = NULL;
    switch (f->type) {
    case LOOM_FT_STRING:
    case LOOM_FT_ENUM:
    case LOOM_FT_CPU:
    case LOOM_FT_SIZE:
        if (loom_json_get_string(body, f->name, false,
                                 f->type == LOOM_FT_STRING ? (size_t)f->max : 32, &s, err) < 0)
            return -1;
        json_object_set_new(out, f->name, json_string(s));
        break;
    case LOOM_FT_INT: {
        int64_t v = 0;
        if (loom_json_get_int(body, f->name, false, f->min, f->max, &v, err) < 0)
            return -1;
        json_object_set_new(out, f->name, json_integer(v));
        break;
    }
    case LOOM_FT_BOOL: {
        bool b = false;
        if (loom_json_get_bool(body, f->name, false, &b, err) < 0)
            return -1;
        json_object_set_new(out, f->name, json_boolean(b));
        break;
    }
    case LOOM_FT_STRINGS: {
        json_t *arr = NULL;
        if (loom_json_get_string_array(body, f->name, false, (size_t)f->min, (size_t)f->max, &arr,
                                       err) < 0)
            return -1;
        json_object_set_new(out, f->name, json_deep_copy(arr));
        break;
    }
    case LOOM_FT_OBJECT:
        break; /* check does it all */
    }
    if ((f->type == LOOM_FT_ENUM && check_enum(out, f, err) < 0) ||
        (f->type == LOOM_FT_SIZE && check_size(out, f, err) < 0) ||
        (f->type == LOOM_FT_CPU && check_cpu(out, f, err) < 0))
        return -1;
    return f->check ? f->check(body, out, f, err) : 0;
}

static json_int_t int_of(json_t *spec, const char *field)
{
    return json_integer_value(json_object_get(spec, field));
}

/* The checks of an app that need the whole spec. */
static int check_app(json_t *spec, struct loom_err *err)
{
    static const char *const at_most[][2] = {
        {"scale_min_instances", "scale_max_instances"},
        {"scale_initial_instances", "scale_max_instances"},
        {"scale_concurrency_target", "scale_concurrency"},
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(at_most); i++) {
        json_int_t a = int_of(spec, at_most[i][0]), b = int_of(spec, at_most[i][1]);
        if (a > b)
            return loom_err_set(err, LOOM_EINVAL, "field \"%s\": %lld is more than %s (%lld)",
                                at_most[i][0], (long long)a, at_most[i][1], (long long)b);
    }
    return 0;
}

/* A build's source: its type from what is given, and what that type needs. */
static int check_source(json_t *spec, bool whole, struct loom_err *err)
{
    json_t *url = json_object_get(spec, "source_url"), *up = json_object_get(spec, "source_upload");
    const char *type = json_string_value(json_object_get(spec, "source_type"));
    if (!type) {
        type = url ? "git" : "local";
        json_object_set_new(spec, "source_type", json_string(type));
    }
    bool git = strcmp(type, "git") == 0;
    if (git && up)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_upload\": a git source (source_type git) has no "
                            "upload");
    if (!git && url)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_url\": a local source (source_type local) is an "
                            "upload (source_upload), not a URL");
    if (!git && json_object_get(spec, "source_secret"))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_secret\": only a git source takes credentials");
    if (!git && json_object_get(spec, "source_revision"))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_revision\": only a git source has revisions");
    if (git && !url)
        return loom_err_set(err, LOOM_EINVAL, "field \"source_url\": is required for a git source");
    if (whole && !git && !up)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_upload\": is required for a local source (upload "
                            "the source first: POST .../uploads, or loom --source DIR)");
    return 0;
}

/* A function's bundle is made by buildpacks and goes to no registry. */
static int check_output(json_t *spec, struct loom_err *err)
{
    const char *type = json_string_value(json_object_get(spec, "output_type"));
    if (!type || strcmp(type, "bundle") != 0)
        return 0;
    const char *strategy = json_string_value(json_object_get(spec, "strategy_type"));
    if (strategy && strcmp(strategy, "buildpacks") != 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"strategy_type\": a bundle (output_type bundle) is built by "
                            "buildpacks, not %s",
                            strategy);
    static const char *const no[] = {"output_image", "output_secret"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(no); i++)
        if (json_object_get(spec, no[i]))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s\": a bundle (output_type bundle) is stored as "
                                "functions' code, not pushed to a registry",
                                no[i]);
    return 0;
}

static int check_build(json_t *spec, struct loom_err *err)
{
    return check_source(spec, false, err) < 0 ? -1 : check_output(spec, err);
}

static int check_buildrun(json_t *spec, struct loom_err *err)
{
    return check_source(spec, true, err) < 0 ? -1 : check_output(spec, err);
}

int loom_spec_complete(enum loom_kind k, json_t *spec, struct loom_err *err)
{
    pthread_once(&once, build_once);
    if (kinds[k].shapes && loom_spec_check_resources(spec, kinds[k].shapes, err) < 0)
        return -1;
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        if (!loom_field_in(f, k) || json_object_get(spec, f->name))
            continue;
        if (f->def_kind == LOOM_DEF_VALUE)
            json_object_set_new(spec, f->name, json_deep_copy(defaults[i]));
        else if (f->def_kind == LOOM_DEF_FOLLOWS)
            json_object_set(spec, f->name, json_object_get(spec, f->def));
    }
    return kinds[k].check ? kinds[k].check(spec, err) : 0;
}

int loom_spec_validate(enum loom_kind k, json_t *body, bool partial, json_t **ret_spec,
                       struct loom_err *err)
{
    if (!json_is_object(body))
        return loom_err_set(err, LOOM_EINVAL, "the body must be a JSON object");
    if (loom_json_check_fields(body, loom_spec_field_names(k), err) < 0)
        return -1;
    _cleanup_json_ json_t *out = json_object();
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        json_t *v = json_object_get(body, f->name);
        if (loom_field_in(f, k) && v && !json_is_null(v) && check_field(body, out, f, err) < 0)
            return -1;
    }
    if (!partial) {
        const char *const *required = kinds[k].required;
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(kinds[k].required) && required[i]; i++)
            if (!json_object_get(out, required[i]))
                return loom_err_set(err, LOOM_EINVAL, "field \"%s\": is required", required[i]);
        if (loom_spec_complete(k, out, err) < 0)
            return -1;
    }
    *ret_spec = TAKE_PTR(out);
    return 0;
}

json_t *loom_spec_merge(const json_t *old, const json_t *patch, const json_t *raw)
{
    json_t *merged = json_deep_copy(old);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)raw, key, v)
    {
        if (json_is_null(v))
            json_object_del(merged, key);
    }
    /* values that were defaulted from another field follow it when only that
     * field changes: a lower scale_concurrency takes the target along */
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        if (f->def_kind != LOOM_DEF_FOLLOWS)
            continue;
        json_t *dep = json_object_get(old, f->name), *src = json_object_get(old, f->def);
        if (json_object_get(patch, f->def) && !json_object_get(patch, f->name) && dep && src &&
            json_equal(dep, src))
            json_object_del(merged, f->name);
    }
    bool cpu = json_object_get(patch, "scale_cpu_limit") != NULL;
    bool mem = json_object_get(patch, "scale_memory_limit") != NULL;
    if (cpu != mem)
        json_object_del(merged, cpu ? "scale_memory_limit" : "scale_cpu_limit");
    /* a new source replaces the old one, of whichever type: its type is
     * derived again unless the patch says it */
    bool url = json_object_get(patch, "source_url") != NULL;
    if ((url || json_object_get(patch, "source_upload")) &&
        !json_object_get(patch, "source_type")) {
        static const char *const git_only[] = {"source_url", "source_revision", "source_secret"};
        json_object_del(merged, "source_type");
        if (url)
            json_object_del(merged, "source_upload");
        for (size_t i = 0; !url && i < LOOM_ARRAY_SIZE(git_only); i++)
            json_object_del(merged, git_only[i]);
    }
    json_object_update(merged, (json_t *)patch);
    return merged;
}

/* A run's spec: the body's fields (a patch) over its parent's spec (NULL:
 * none); *ret_given is what the body gave. */
static int run_spec(enum loom_kind k, const json_t *parent_spec, json_t *body, json_t **ret_spec,
                    json_t **ret_given, struct loom_err *err)
{
    _cleanup_json_ json_t *given = NULL;
    if (loom_spec_validate(k, body, true, &given, err) < 0)
        return -1;
    _cleanup_json_ json_t *empty = json_object();
    _cleanup_json_ json_t *out = loom_spec_merge(parent_spec ? parent_spec : empty, given, given);
    const char *const *required = kinds[k].required;
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(kinds[k].required) && required[i]; i++)
        if (!json_object_get(out, required[i]))
            return loom_err_set(err, LOOM_EINVAL, "field \"%s\": is required unless %s is given",
                                required[i], kinds[k].parent_field);
    if (loom_spec_complete(k, out, err) < 0)
        return -1;
    *ret_spec = TAKE_PTR(out);
    if (ret_given)
        *ret_given = TAKE_PTR(given);
    return 0;
}

int loom_spec_buildrun(const json_t *build_spec, json_t *body, json_t **ret_spec,
                       struct loom_err *err)
{
    return run_spec(LOOM_KIND_BUILDRUN, build_spec, body, ret_spec, NULL, err);
}

int loom_spec_jobrun(const json_t *job_spec, json_t *body, json_t **ret_spec,
                     struct loom_arrayspec *ret_indices, struct loom_err *err)
{
    _cleanup_json_ json_t *given = NULL, *out = NULL;
    if (run_spec(LOOM_KIND_JOBRUN, job_spec, body, &out, &given, err) < 0)
        return -1;
    const char *mode = json_string_value(json_object_get(out, "run_mode"));
    if (mode && strcmp(mode, "daemon") == 0 &&
        (json_object_get(given, "scale_retry_limit") ||
         json_object_get(given, "scale_max_execution_time")))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_mode\": a daemon run takes no scale_retry_limit or "
                            "scale_max_execution_time");
    const char *indices = json_string_value(json_object_get(out, "scale_array_spec"));
    struct loom_arrayspec as = {0};
    if (loom_arrayspec_parse(indices ? indices : "0", LOOM_ARRAY_MAX_COUNT, &as, err) < 0)
        return loom_err_wrap(err, "field \"scale_array_spec\"");
    json_object_del(out, "scale_array_spec");
    *ret_spec = TAKE_PTR(out);
    *ret_indices = as;
    return 0;
}

/* ---- decode ---------------------------------------------------------------------- */

static int decode_field(const struct loom_field *f, json_t *v, struct loom_spec *s,
                        struct loom_err *err)
{
    void *dst = (char *)s + f->offset;
    switch (f->type) {
    case LOOM_FT_STRING:
        if (!json_is_string(v))
            return loom_err_set(err, LOOM_EINVAL, "must be a string");
        *(const char **)dst = json_string_value(v);
        return 0;
    case LOOM_FT_INT: {
        json_int_t x = json_integer_value(v);
        if (!json_is_integer(v) || x < f->min || x > f->max)
            return loom_err_set(err, LOOM_EINVAL, "must be an integer from %lld to %lld",
                                (long long)f->min, (long long)f->max);
        *(int64_t *)dst = x;
        return 0;
    }
    case LOOM_FT_BOOL:
        if (!json_is_boolean(v))
            return loom_err_set(err, LOOM_EINVAL, "must be true or false");
        *(bool *)dst = json_is_true(v);
        return 0;
    case LOOM_FT_ENUM:
        for (int i = 0; json_is_string(v) && f->choices[i]; i++)
            if (strcmp(json_string_value(v), f->choices[i]) == 0) {
                *(int *)dst = i;
                return 0;
            }
        return loom_err_set(err, LOOM_EINVAL, "not one of its choices");
    case LOOM_FT_CPU:
        return loom_cpu_parse(json_string_value(v), dst, err);
    case LOOM_FT_SIZE:
        return loom_size_parse(json_string_value(v), LOOM_SIZE_MEMORY, dst, err);
    case LOOM_FT_STRINGS:
        if (!json_is_array(v))
            return loom_err_set(err, LOOM_EINVAL, "must be an array");
        *(json_t **)dst = v;
        return 0;
    case LOOM_FT_OBJECT:
        if (f->decode)
            return f->decode(v, dst, err);
        *(json_t **)dst = v;
        return 0;
    }
    return loom_err_set(err, LOOM_EINTERNAL, "unknown field type");
}

int loom_spec_decode(enum loom_kind k, json_t *spec, struct loom_spec *ret, struct loom_err *err)
{
    pthread_once(&once, build_once);
    if (!json_is_object(spec))
        return loom_err_set(err, LOOM_EINVAL, "the %s's spec is not a JSON object",
                            loom_kind_what(k));
    struct loom_spec s = {.kind = k, .json = json_incref(spec)};
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        if (!loom_field_in(f, k))
            continue;
        json_t *v = json_object_get(spec, f->name);
        if (json_is_null(v))
            v = NULL;
        if (!v && f->def_kind == LOOM_DEF_FOLLOWS) {
            const struct loom_field *src = loom_spec_field(k, f->def);
            *(int64_t *)((char *)&s + f->offset) = *(int64_t *)((char *)&s + src->offset);
            continue;
        }
        if (!v)
            v = defaults[i];
        int rc = 0;
        if (v)
            rc = decode_field(f, v, &s, err);
        else if (f->decode)
            rc = f->decode(NULL, (char *)&s + f->offset, err);
        if (rc < 0) {
            loom_spec_release(&s);
            return loom_err_wrap(err, "field \"%s\" of the stored %s spec", f->name,
                                 loom_kind_what(k));
        }
    }
    *ret = s;
    return 0;
}

int loom_spec_decode_text(enum loom_kind k, const char *text, struct loom_spec *ret,
                          struct loom_err *err)
{
    _cleanup_json_ json_t *j = loom_json_parse_object(text, strlen(text), err);
    if (!j)
        return loom_err_wrap(err, "the stored %s spec", loom_kind_what(k));
    return loom_spec_decode(k, j, ret, err);
}

void loom_spec_release(struct loom_spec *s)
{
    if (!s)
        return;
    json_decref(s->json);
    *s = (struct loom_spec){0};
}

/* ---- columns and schemas ------------------------------------------------------------ */

size_t loom_spec_columns(enum loom_kind k, const struct loom_spec *s,
                         const char *ret_names[LOOM_SPEC_MAX_COLUMNS],
                         char ret_values[LOOM_SPEC_MAX_COLUMNS][24])
{
    size_t n = 0;
    if (!kinds[k].columns)
        return 0;
    for (size_t i = 0; i < loom_spec_table_len && n < LOOM_SPEC_MAX_COLUMNS; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        if (!loom_field_in(f, k) || !f->column)
            continue;
        ret_names[n] = f->column;
        if (s)
            snprintf(ret_values[n], 24, "%lld",
                     (long long)*(const int64_t *)((const char *)s + f->offset));
        n++;
    }
    return n;
}

/* A schema text written with ' for ", parsed. */
static json_t *schema_text(const char *sq)
{
    _cleanup_free_ char *text = strdup(sq);
    if (!text)
        abort();
    for (char *c = text; *c; c++)
        if (*c == '\'')
            *c = '"';
    json_t *j = json_loads(text, 0, NULL);
    if (!j)
        abort(); /* a broken schema in the table: the unit test catches it first */
    return j;
}

json_t *loom_spec_schema(unsigned all, unsigned none)
{
    pthread_once(&once, build_once);
    json_t *props = json_object();
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        if ((f->kinds & all) != all || (f->kinds & none) != 0)
            continue;
        json_t *p = f->schema ? schema_text(f->schema) : json_object();
        switch (f->type) {
        case LOOM_FT_STRING:
            json_object_set_new(p, "type", json_string("string"));
            json_object_set_new(p, "maxLength", json_integer(f->max));
            break;
        case LOOM_FT_INT:
            json_object_set_new(p, "type", json_string("integer"));
            json_object_set_new(p, "minimum", json_integer(f->min));
            json_object_set_new(p, "maximum", json_integer(f->max));
            break;
        case LOOM_FT_ENUM: {
            json_t *e = json_array();
            for (const char *const *c = f->choices; *c; c++)
                json_array_append_new(e, json_string(*c));
            json_object_set_new(p, "enum", e);
            break;
        }
        case LOOM_FT_BOOL:
            json_object_set_new(p, "type", json_string("boolean"));
            break;
        case LOOM_FT_CPU: {
            json_t *e = json_array();
            for (const char *const *c = f->choices; c && *c; c++)
                json_array_append_new(e, json_string(*c));
            json_object_set_new(p, "enum", e);
            break;
        }
        case LOOM_FT_STRINGS:
            json_object_set_new(p, "type", json_string("array"));
            json_object_set_new(p, "maxItems", json_integer(f->min));
            json_object_set_new(
                p, "items",
                json_pack("{s:s,s:I}", "type", "string", "maxLength", (json_int_t)f->max));
            break;
        case LOOM_FT_SIZE:
        case LOOM_FT_OBJECT:
            break; /* the table's schema says it */
        }
        if (defaults[i])
            json_object_set(p, "default", defaults[i]);
        if (f->help && !json_object_get(p, "$ref"))
            json_object_set_new(p, "description", json_string(f->help));
        json_object_set_new(props, f->name, p);
    }
    return json_pack("{s:s,s:o}", "type", "object", "properties", props);
}
