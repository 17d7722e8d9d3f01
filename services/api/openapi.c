/* /openapi.json: an OpenAPI 3.1 description of the API, assembled once from
 * the operation table below and the component schemas. A unit test checks
 * that every route in routes.c is described here and the reverse. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"

struct op {
    const char *method; /* lowercase */
    const char *path;
    const char *id;
    const char *summary;
    const char *request;  /* component schema name, or NULL */
    int status;           /* success status */
    const char *response; /* component schema name, or NULL for no body */
};

static const struct op ops[] = {
    {"get", "/openapi.json", "getOpenAPI", "This document", NULL, 200, NULL},
    {"get", "/v1/projects", "listProjects", "List the projects the key can see", NULL, 200,
     "ProjectList"},
    {"post", "/v1/projects", "createProject", "Create a project (admin keys)", "ProjectCreate", 201,
     "Project"},
    {"get", "/v1/projects/{project}", "getProject", "Get a project", NULL, 200, "Project"},
    {"delete", "/v1/projects/{project}", "deleteProject",
     "Delete a project and all it holds (admin keys; refused while instances run)", NULL, 204,
     NULL},
    {"post", "/v1/projects/{project}/jobs", "createJob", "Create a job definition", "Job", 201,
     "Job"},
    {"get", "/v1/projects/{project}/jobs", "listJobs", "List jobs", NULL, 200, "JobList"},
    {"get", "/v1/projects/{project}/jobs/{name}", "getJob", "Get a job (ETag = generation)", NULL,
     200, "Job"},
    {"patch", "/v1/projects/{project}/jobs/{name}", "updateJob",
     "Change some fields of a job (If-Match: its ETag): each given top-level field replaces the "
     "stored one, null takes it back to its default",
     "JobPatch", 200, "Job"},
    {"delete", "/v1/projects/{project}/jobs/{name}", "deleteJob", "Delete a job (runs stay)", NULL,
     204, NULL},
    {"post", "/v1/projects/{project}/job_runs", "createJobRun",
     "Submit a job run (standalone, or from job_name)", "JobRunCreate", 201, "JobRun"},
    {"get", "/v1/projects/{project}/job_runs", "listJobRuns", "List job runs (?job_name= filters)",
     NULL, 200, "JobRunList"},
    {"get", "/v1/projects/{project}/job_runs/{name}", "getJobRun",
     "Get a job run with per-index status", NULL, 200, "JobRun"},
    {"delete", "/v1/projects/{project}/job_runs/{name}", "deleteJobRun",
     "Delete a job run; 202 while its instances are being stopped (delete again)", NULL, 204, NULL},
    {"get", "/v1/projects/{project}/job_runs/{name}/logs", "getJobRunLogs",
     "Output lines of a run's instances, index by index (?index=N, ?instance=ID, "
     "?stream=stdout|stderr, ?since=TIME|DURATION, ?tail=N; a finished index's lines are all "
     "there, else \"incomplete\" says why; ?follow=true: server-sent events, ending with the run)",
     NULL, 200, "LogLines"},
    {"post", "/v1/projects/{project}/job_runs/{name}/cancel", "cancelJobRun",
     "Cancel a pending or running run and stop its instances", NULL, 200, "JobRun"},
    {"post", "/v1/projects/{project}/job_runs/{name}/resubmit", "resubmitJobRun",
     "Run a run's failed indices (or the given ones) again as a new run", "JobRunResubmit", 201,
     "JobRun"},
    {"post", "/v1/projects/{project}/apps", "createApp", "Create an app", "App", 201, "App"},
    {"get", "/v1/projects/{project}/apps", "listApps", "List apps", NULL, 200, "AppList"},
    {"get", "/v1/projects/{project}/apps/{name}", "getApp", "Get an app (ETag = generation)", NULL,
     200, "App"},
    {"patch", "/v1/projects/{project}/apps/{name}", "updateApp",
     "Change some fields of an app, a new generation (If-Match: its ETag): each given top-level "
     "field replaces the stored one, null takes it back to its default",
     "AppPatch", 200, "App"},
    {"delete", "/v1/projects/{project}/apps/{name}", "deleteApp",
     "Delete an app; 202 while its instances are being stopped (delete again)", NULL, 204, NULL},
    {"get", "/v1/projects/{project}/apps/{name}/instances", "listAppInstances",
     "An app's instances", NULL, 200, "InstanceList"},
    {"get", "/v1/projects/{project}/apps/{name}/revisions", "listAppRevisions",
     "An app's generations, newest first", NULL, 200, "RevisionList"},
    {"get", "/v1/projects/{project}/apps/{name}/logs", "getAppLogs",
     "Output lines of an app's instances in time order (?instance=, ?stream=, ?since=, ?tail=, "
     "?limit=, ?after=<next>; ?follow=true: server-sent events)",
     NULL, 200, "AppLogLines"},
    {"post", "/v1/projects/{project}/functions", "createFunction",
     "Create a function from inline code or a tar.gz bundle (a data: URL)", "Function", 201,
     "Function"},
    {"get", "/v1/projects/{project}/functions", "listFunctions", "List functions", NULL, 200,
     "FunctionList"},
    {"get", "/v1/projects/{project}/functions/{name}", "getFunction",
     "Get a function (ETag = generation); its endpoint is where it is called", NULL, 200,
     "Function"},
    {"patch", "/v1/projects/{project}/functions/{name}", "updateFunction",
     "Change some fields of a function, a new generation (If-Match: its ETag); calls in flight "
     "finish on the old one",
     "FunctionPatch", 200, "Function"},
    {"delete", "/v1/projects/{project}/functions/{name}", "deleteFunction",
     "Delete a function; its instances stop", NULL, 204, NULL},
    {"get", "/v1/projects/{project}/functions/{name}/activations", "listFunctionActivations",
     "One record per call, newest first", NULL, 200, "ActivationList"},
    {"get", "/v1/projects/{project}/functions/{name}/logs", "getFunctionLogs",
     "Output lines of a function's instances, each prefixed with its call's activation id "
     "(?instance=, ?limit=, ?after=<next>)",
     NULL, 200, "AppLogLines"},
    {"get", "/v1/function_runtimes", "listFunctionRuntimes",
     "The runtimes functions can use (any key)", NULL, 200, "FunctionRuntimeList"},
    {"post", "/v1/projects/{project}/uploads", "createUpload",
     "Upload a build's source: the body is one tar.gz (Content-Type application/gzip, "
     "optionally Content-Digest: sha-256=:<base64>:), at most LOOM_API_MAX_UPLOAD bytes; "
     "stored once by content (201 new, 200 already there); links may not leave it",
     NULL, 201, "Upload"},
    {"get", "/v1/projects/{project}/uploads/{name}", "getUpload",
     "Whether this project uploaded a source (name: its sha256:<hex> digest)", NULL, 200, "Upload"},
    {"post", "/v1/projects/{project}/builds", "createBuild",
     "Save a build: its source, strategy and output image", "Build", 201, "Build"},
    {"get", "/v1/projects/{project}/builds", "listBuilds", "List builds", NULL, 200, "BuildList"},
    {"get", "/v1/projects/{project}/builds/{name}", "getBuild", "Get a build (ETag = generation)",
     NULL, 200, "Build"},
    {"patch", "/v1/projects/{project}/builds/{name}", "updateBuild",
     "Change some fields of a build (If-Match: its ETag); null takes a field back to its "
     "default",
     "BuildPatch", 200, "Build"},
    {"delete", "/v1/projects/{project}/builds/{name}", "deleteBuild", "Delete a build (runs stay)",
     NULL, 204, NULL},
    {"post", "/v1/projects/{project}/build_runs", "createBuildRun",
     "Submit a build run (standalone, or from build_name): source to an image pushed to the "
     "registry",
     "BuildRunCreate", 201, "BuildRun"},
    {"get", "/v1/projects/{project}/build_runs", "listBuildRuns",
     "List build runs (?build_name= filters)", NULL, 200, "BuildRunList"},
    {"get", "/v1/projects/{project}/build_runs/{name}", "getBuildRun",
     "Get a build run: its status, steps and the digest it pushed", NULL, 200, "BuildRun"},
    {"delete", "/v1/projects/{project}/build_runs/{name}", "deleteBuildRun",
     "Delete a build run; 202 while it is being cancelled or its steps stop (delete again)", NULL,
     204, NULL},
    {"post", "/v1/projects/{project}/build_runs/{name}/cancel", "cancelBuildRun",
     "Cancel a pending or running build run: its steps stop and nothing is tagged", NULL, 200,
     "BuildRun"},
    {"get", "/v1/projects/{project}/build_runs/{name}/logs", "getBuildRunLogs",
     "What the builder and the run's steps printed, in time order (?after=<next>)", NULL, 200,
     "BuildLogLines"},
    {"post", "/v1/projects/{project}/secrets", "createSecret", "Create a secret", "Secret", 201,
     "Secret"},
    {"get", "/v1/projects/{project}/secrets", "listSecrets", "List secrets (keys, no values)", NULL,
     200, "SecretList"},
    {"get", "/v1/projects/{project}/secrets/{name}", "getSecret",
     "Get a secret: its keys and metadata, never its values", NULL, 200, "Secret"},
    {"put", "/v1/projects/{project}/secrets/{name}", "replaceSecret",
     "Replace a secret's data (If-Match optional; format kept when not given)", "Secret", 200,
     "Secret"},
    {"delete", "/v1/projects/{project}/secrets/{name}", "deleteSecret", "Delete a secret", NULL,
     204, NULL},
    {"post", "/v1/projects/{project}/config_maps", "createConfigMap", "Create a config map",
     "ConfigMap", 201, "ConfigMap"},
    {"get", "/v1/projects/{project}/config_maps", "listConfigMaps", "List config maps", NULL, 200,
     "ConfigMapList"},
    {"get", "/v1/projects/{project}/config_maps/{name}", "getConfigMap", "Get a config map", NULL,
     200, "ConfigMap"},
    {"put", "/v1/projects/{project}/config_maps/{name}", "replaceConfigMap",
     "Replace a config map's data (If-Match optional)", "ConfigMap", 200, "ConfigMap"},
    {"delete", "/v1/projects/{project}/config_maps/{name}", "deleteConfigMap",
     "Delete a config map", NULL, 204, NULL},
    {"get", "/v1/admin/nodes", "listNodes", "Nodes with their state and load (admin keys)", NULL,
     200, "NodeList"},
    {"post", "/v1/admin/nodes/{name}/{action}", "nodeAction",
     "cordon, uncordon or drain a node (admin keys)", NULL, 200, "NodeState"},
    {"get", "/v1/admin/keys", "listKeys", "API keys, without secrets (admin keys)", NULL, 200,
     "KeyList"},
    {"post", "/v1/admin/keys", "createKey", "Create an API key; the reply holds it, once",
     "KeyCreate", 201, "Key"},
    {"delete", "/v1/admin/keys/{name}", "revokeKey", "Revoke an API key by its key id", NULL, 204,
     NULL},
    {"get", "/v1/admin/projects/{project}/quota", "getQuota",
     "A project's quota; null members are no limit (admin keys)", NULL, 200, "Quota"},
    {"put", "/v1/admin/projects/{project}/quota", "replaceQuota",
     "Replace a project's quota; absent or null members are no limit (admin keys)", "Quota", 200,
     "Quota"},
    {"get", "/v1/projects/{project}/usage", "getUsage",
     "What the project consumed and what it cost, by resource (default), kind or day "
     "(?from=&to= RFC 3339, a day or a month; default this month; ?group_by=resource|kind|day). "
     "Hours not closed yet are provisional (final: false)",
     NULL, 200, "Usage"},
    {"get", "/v1/admin/usage/export", "exportUsage",
     "The hourly usage records as FinOps FOCUS 1.2 CSV, streamed (?format=focus&from=&to= "
     "required; &project=, &include_open=true for hours not closed yet; admin keys)",
     NULL, 200, NULL},
};

/* Operations that answer with a stream too, or only: its media type. */
static const struct {
    const char *id, *media;
} streams[] = {
    {"exportUsage", "text/csv"},
    {"getJobRunLogs", "text/event-stream"},
    {"getAppLogs", "text/event-stream"},
    {"getFunctionLogs", "text/event-stream"},
};

static const char *stream_media(const struct op *o)
{
    for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++)
        if (strcmp(streams[i].id, o->id) == 0)
            return streams[i].media;
    return NULL;
}

/* Component schemas, one JSON text each (ISO C caps a literal at 4095). */
static const char *const schemas[][2] = {
    {"Problem", "{\"type\":\"object\",\"description\":\"RFC 9457 problem details\","
                "\"properties\":{\"type\":{\"type\":\"string\"},\"title\":{\"type\":\"string\"},"
                "\"status\":{\"type\":\"integer\"},\"detail\":{\"type\":\"string\"},"
                "\"instance\":{\"type\":\"string\"},\"request_id\":{\"type\":\"string\"}}}"},
    {"Name", "{\"type\":\"string\",\"pattern\":\"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$\"}"},
    {"Job", "{\"allOf\":[{\"$ref\":\"#/components/schemas/Meta\"},{\"$ref\":\"#/components/schemas/"
            "RunFields\"},{\"$ref\":\"#/components/"
            "schemas/JobFields\"},{\"type\":\"object\",\"required\":[\"name\","
            "\"image_reference\"],\"properties\":{\"name\":{\"$ref\":\"#/components/schemas/"
            "Name\"},\"generation\":{\"type\":\"integer\",\"readOnly\":true},\"entity_tag\":{"
            "\"type\":\"string\",\"readOnly\":true}}}]}"},
    {"JobPatch", "{\"allOf\":[{\"$ref\":\"#/components/schemas/RunFields\"},{\"$ref\":\"#/"
                 "components/schemas/JobFields\"}]}"},
    {"JobList", "{\"type\":\"object\",\"properties\":{\"jobs\":{\"type\":\"array\",\"items\":{"
                "\"$ref\":\"#/components/schemas/Job\"}},\"limit\":{\"type\":\"integer\"},"
                "\"next\":{\"type\":\"string\"}}}"},
    {"JobRunCreate",
     "{\"allOf\":[{\"$ref\":\"#/components/schemas/RunFields\"},{\"$ref\":\"#/components/schemas/"
     "JobFields\"},{\"type\":\"object\",\"required\":[\"name\"],\"properties\":{\"name\":{"
     "\"$ref\":\"#/components/schemas/Name\"},\"job_name\":{\"$ref\":\"#/components/schemas/"
     "Name\"}}}],\"description\":\"image_reference is required unless job_name is given\"}"},
    {"JobRunResubmit", "{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
                       "\"name\":{\"$ref\":\"#/components/schemas/Name\"},\"scale_array_spec\":{"
                       "\"type\":\"string\"}}}"},
    {"IndexDetail",
     "{\"type\":\"object\",\"properties\":{\"index\":{\"type\":\"integer\"},\"status\":{\"enum\":"
     "[\"pending\",\"running\",\"succeeded\",\"failed\"]},\"retries\":{\"type\":\"integer\"},"
     "\"started_at\":{\"type\":[\"string\",\"null\"]},\"finished_at\":{\"type\":[\"string\","
     "\"null\"]},\"exit_code\":{\"type\":[\"integer\",\"null\"]},\"last_failure_reason\":{"
     "\"type\":[\"string\",\"null\"]}}}"},
    {"JobRun",
     "{\"allOf\":[{\"$ref\":\"#/components/schemas/Meta\"},{\"$ref\":\"#/components/schemas/"
     "JobRunCreate\"},{\"type\":\"object\","
     "\"properties\":{\"id\":{\"type\":\"integer\"},\"created_at\":{\"type\":\"string\"},"
     "\"finished_at\":{\"type\":[\"string\",\"null\"]},\"status\":{\"enum\":[\"pending\","
     "\"running\",\"completed\",\"failed\",\"cancelled\"]},\"status_details\":{\"type\":"
     "\"object\",\"properties\":{\"requested\":{\"type\":\"integer\"},\"pending\":{\"type\":"
     "\"integer\"},\"running\":{\"type\":\"integer\"},\"succeeded\":{\"type\":\"integer\"},"
     "\"failed\":{\"type\":\"integer\"},\"pending_indices\":{\"type\":\"string\"},\"waiting_"
     "reason\":{"
     "\"type\":[\"string\",\"null\"]},\"indices_details_truncated\":{\"type\":\"boolean\"},"
     "\"running_indices\":{\"type\":\"string\"},\"succeeded_indices\":{\"type\":\"string\"},"
     "\"failed_indices\":{\"type\":\"string\"},\"indices_details\":{\"type\":\"array\","
     "\"maxItems\":1000,\"items\":{\"$ref\":\"#/components/schemas/IndexDetail\"}}}}}}]}"},
    {"JobRunList", "{\"type\":\"object\",\"properties\":{\"job_runs\":{\"type\":\"array\","
                   "\"items\":{\"$ref\":\"#/components/schemas/JobRun\"}},\"limit\":{\"type\":"
                   "\"integer\"},\"next\":{\"type\":\"string\"}}}"},
    {"LogLines", "{\"type\":\"object\",\"properties\":{\"lines\":{\"type\":\"array\",\"items\":{"
                 "\"type\":\"object\",\"properties\":{\"index\":{\"type\":\"integer\"},\"retry\":"
                 "{\"type\":\"integer\"},\"instance\":{\"type\":\"string\"},\"ts\":{\"type\":"
                 "\"string\"},\"stream\":{\"enum\":[\"stdout\",\"stderr\"]},\"line\":{\"type\":"
                 "\"string\"}}}},\"truncated\":{\"type\":\"boolean\"},\"incomplete\":{"
                 "\"$ref\":\"#/components/schemas/LogsIncomplete\"}}}"},
    {"LogsIncomplete",
     "{\"type\":\"array\",\"description\":\"finished instances whose last lines may be "
     "missing, and why\",\"items\":{\"type\":\"object\",\"properties\":{\"instance\":{"
     "\"type\":\"string\"},\"node\":{\"type\":\"string\"},\"reason\":{\"type\":"
     "\"string\"}}}}"},
    {"AppLogLines", "{\"type\":\"object\",\"properties\":{\"lines\":{\"type\":\"array\","
                    "\"items\":{\"type\":\"object\",\"properties\":{\"instance\":{\"type\":"
                    "\"string\"},\"ts\":{\"type\":\"string\"},\"stream\":{\"enum\":["
                    "\"stdout\",\"stderr\"]},\"line\":{\"type\":\"string\"}}}},\"next\":{"
                    "\"type\":\"string\",\"description\":\"cursor for ?after=\"},"
                    "\"incomplete\":{\"$ref\":\"#/components/schemas/LogsIncomplete\"}}}"},
    {"NodeList",
     "{\"type\":\"object\",\"properties\":{\"nodes\":{\"type\":\"array\",\"items\":{\"type\":"
     "\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"state\":{\"enum\":[\"ready\","
     "\"cordoned\",\"draining\",\"lost\"]},\"address\":{\"type\":\"string\"},\"cpu_millis\":{"
     "\"type\":\"integer\"},\"memory_bytes\":{\"type\":\"integer\"},\"instances\":{\"type\":"
     "\"integer\"},\"last_heartbeat\":{\"type\":\"string\"},\"health_problem\":{\"type\":["
     "\"string\",\"null\"],\"description\":\"what the node's health checks found, null when "
     "healthy\"},\"cordoned_by\":{\"enum\":[\"operator\",\"health\",null],\"description\":"
     "\"who took the node out of service\"}}}}}}"},
    {"Quota", "{\"type\":\"object\",\"properties\":{\"project\":{\"type\":\"string\","
              "\"readOnly\":true},\"cpu_millis\":{\"type\":[\"integer\",\"null\"],\"minimum\":0},"
              "\"memory_bytes\":{\"type\":[\"integer\",\"null\"],\"minimum\":0},\"gpus\":{"
              "\"type\":[\"integer\",\"null\"],\"minimum\":0},\"instances\":{\"type\":["
              "\"integer\",\"null\"],\"minimum\":0},\"updated_at\":{\"type\":[\"string\","
              "\"null\"],\"readOnly\":true}}}"},
    {"Usage",
     "{\"type\":\"object\",\"properties\":{\"project\":{\"type\":\"string\"},\"from\":{"
     "\"type\":\"string\"},\"to\":{\"type\":\"string\"},\"group_by\":{\"enum\":[\"resource\","
     "\"kind\",\"day\"]},\"items\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
     "\"properties\":{\"kind\":{\"type\":\"string\"},\"resource\":{\"type\":\"string\"},"
     "\"day\":{\"type\":\"string\"},\"metric\":{\"type\":\"string\"},\"unit\":{\"type\":"
     "\"string\"},\"quantity\":{\"type\":\"string\",\"description\":\"an exact decimal\"},"
     "\"cost\":{\"type\":\"string\"},\"list_cost\":{\"type\":\"string\"},\"currency\":{"
     "\"type\":\"string\"},\"final\":{\"type\":\"boolean\"}}}},\"totals\":{\"type\":"
     "\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"currency\":{\"type\":"
     "\"string\"},\"cost\":{\"type\":\"string\"},\"list_cost\":{\"type\":\"string\"}}}},"
     "\"peaks\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{"
     "\"kind\":{\"type\":\"string\"},\"resource\":{\"type\":\"string\"},"
     "\"memory_peak_bytes\":{\"type\":\"integer\"}}}}}}"},
    {"NodeState", "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                  "\"state\":{\"type\":\"string\"}}}"},
    {"KeyCreate", "{\"type\":\"object\",\"required\":[\"role\"],\"additionalProperties\":false,"
                  "\"properties\":{\"role\":{\"enum\":[\"admin\",\"read\",\"write\"]},\"project\":{"
                  "\"type\":\"string\"},\"description\":{\"type\":\"string\"}}}"},
    {"Key", "{\"type\":\"object\",\"properties\":{\"key_id\":{\"type\":\"string\"},\"role\":{"
            "\"type\":\"string\"},\"project\":{\"type\":[\"string\",\"null\"]},\"description\":{"
            "\"type\":\"string\"},\"created_at\":{\"type\":\"string\"},\"revoked_at\":{\"type\":"
            "[\"string\",\"null\"]},\"key\":{\"type\":\"string\",\"description\":\"only in the "
            "reply to POST\"}}}"},
    {"KeyList", "{\"type\":\"object\",\"properties\":{\"keys\":{\"type\":\"array\",\"items\":{"
                "\"$ref\":\"#/components/schemas/Key\"}}}}"},
    {"App",
     "{\"allOf\":[{\"$ref\":\"#/components/schemas/Meta\"},{\"$ref\":\"#/components/schemas/"
     "RunFields\"},{\"$ref\":\"#/components/schemas/"
     "AppFields\"},{\"type\":\"object\",\"required\":[\"name\",\"image_reference\"],"
     "\"properties\":{\"name\":{\"$ref\":\"#/components/schemas/Name\"},\"endpoint\":{\"type\":"
     "\"string\",\"readOnly\":true},\"url\":{\"type\":\"string\",\"readOnly\":true},"
     "\"generation\":{\"type\":\"integer\",\"readOnly\":true},\"entity_tag\":{\"type\":"
     "\"string\",\"readOnly\":true},\"status\":{\"enum\":[\"deploying\",\"ready\"],\"readOnly\":"
     "true},\"status_details\":{\"type\":\"object\",\"readOnly\":true,\"properties\":{"
     "\"instances_running\":{\"type\":\"integer\"},\"instances_desired\":{\"type\":"
     "\"integer\"},\"waiting_reason\":{\"type\":[\"string\",\"null\"],"
     "\"description\":\"why instances are not placed\"}}}}}]}"},
    {"AppPatch", "{\"allOf\":[{\"$ref\":\"#/components/schemas/RunFields\"},{\"$ref\":\"#/"
                 "components/schemas/AppFields\"}]}"},
    {"AppList", "{\"type\":\"object\",\"properties\":{\"apps\":{\"type\":\"array\",\"items\":{"
                "\"$ref\":\"#/components/schemas/App\"}},\"limit\":{\"type\":\"integer\"},"
                "\"next\":{\"type\":\"string\"}}}"},
    {"InstanceList",
     "{\"type\":\"object\",\"properties\":{\"instances\":{\"type\":\"array\",\"items\":{\"type\":"
     "\"object\",\"properties\":{\"id\":{\"type\":\"string\",\"format\":\"uuid\"},\"status\":{"
     "\"type\":\"string\"},\"desired\":{\"enum\":[\"run\",\"stop\"]},\"node\":{\"type\":"
     "\"string\"},\"address\":{\"type\":[\"string\",\"null\"]},\"generation\":{\"type\":"
     "\"integer\"},\"created_at\":{\"type\":\"string\"},\"started_at\":{\"type\":[\"string\","
     "\"null\"]}}}}}}"},
    {"RevisionList", "{\"type\":\"object\",\"properties\":{\"revisions\":{\"type\":\"array\","
                     "\"items\":{\"$ref\":\"#/components/schemas/AppPatch\"}}}}"},
    {"Project", "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"name\":{"
                "\"$ref\":\"#/components/schemas/Name\"},\"created_at\":{\"type\":\"string\"},"
                "\"status\":{\"const\":\"active\"}}}"},
    {"ProjectCreate", "{\"type\":\"object\",\"required\":[\"name\"],\"additionalProperties\":"
                      "false,\"properties\":{\"name\":{\"$ref\":\"#/components/schemas/"
                      "Name\"}}}"},
    {"ProjectList", "{\"type\":\"object\",\"properties\":{\"projects\":{\"type\":\"array\","
                    "\"items\":{\"$ref\":\"#/components/schemas/Project\"}},\"limit\":{\"type\":"
                    "\"integer\"},\"next\":{\"type\":\"string\"}}}"},
    {"SecretList", "{\"type\":\"object\",\"properties\":{\"secrets\":{\"type\":\"array\","
                   "\"items\":{\"$ref\":\"#/components/schemas/Secret\"}},\"limit\":{\"type\":"
                   "\"integer\"},\"next\":{\"type\":\"string\"}}}"},
    {"ConfigMapList", "{\"type\":\"object\",\"properties\":{\"config_maps\":{\"type\":\"array\","
                      "\"items\":{\"$ref\":\"#/components/schemas/ConfigMap\"}},\"limit\":{"
                      "\"type\":\"integer\"},\"next\":{\"type\":\"string\"}}}"},
};

/* More component schemas, written with ' for " to stay readable (converted
 * when the document is built; so no apostrophes in their text). */
static const char *const schemas_sq[][2] = {
    {"Function",
     "{'allOf':[{'$ref':'#/components/schemas/Meta'},{'$ref':'#/components/schemas/FunctionFields'"
     "},{'type':'object','required':['name','runtime','code_reference'],'properties':{'name':{'$r"
     "ef':'#/components/schemas/Name'},'endpoint':{'type':'string','readOnly':true,'description':"
     "'POST or GET it: the query and a JSON body are the parameters'},'status':{'enum':['ready'],"
     "'readOnly':true},'status_details':{'type':'object','readOnly':true,'properties':{'instances_"
     "running':{'type':'integer'}}}}}]}"},
    {"FunctionPatch", "{'allOf':[{'$ref':'#/components/schemas/FunctionFields'}]}"},
    {"FunctionList", "{'type':'object','properties':{'functions':{'type':'array','items':{'$ref':"
                     "'#/components/schemas/Function'}},'limit':{'type':'integer'},'next':{'type':"
                     "'string'}}}"},
    {"ActivationList",
     "{'type':'object','properties':{'activations':{'type':'array','items':{'type':'object','prop"
     "erties':{'id':{'type':'string','format':'uuid'},'function_name':{'type':'string'},'generati"
     "on':{'type':'integer'},'instance_id':{'type':['string','null']},'started_at':{'type':'strin"
     "g'},'duration_ms':{'type':'number'},'billed_duration_ms':{'type':'integer','description':'t"
     "he duration rounded up to the millisecond'},'memory_bytes':{'type':'integer'},'status':{'en"
     "um':['success','application_error','developer_error','timeout','system_error']},'http_statu"
     "s':{'type':'integer'},'cold':{'type':'boolean','description':'the call started an instanc"
     "e'}}}},'limit':{'type':'integer'},'next':{'type':'string'}}}"},
    {"FunctionRuntimeList",
     "{'type':'object','properties':{'function_runtimes':{'type':'array','items':{'type':'object'"
     ",'properties':{'name':{'type':'string'},'family':{'type':'string'},'default':{'type':'boole"
     "an'},'deprecated':{'type':'boolean'}}}}}}"},
    {"Upload", "{'type':'object','properties':{'digest':{'type':'string','pattern':'^sha256:[0-"
               "9a-f]{64}$'},'size':{'type':'integer'},'files':{'type':'integer'},'already_stor"
               "ed':{'type':'boolean','description':'the registry had it: nothing was stored'},"
               "'bytes_stored':{'type':'integer'},'created_at':{'type':'string'}}}"},
    {"Build", "{'allOf':[{'$ref':'#/components/schemas/Meta'},{'$ref':'#/components/schemas/Build"
              "Fields'},{'type':'object','required':['name'],'properties':{'name':{'$ref':'#/comp"
              "onents/schemas/Name'}}}]}"},
    {"BuildPatch", "{'allOf':[{'$ref':'#/components/schemas/BuildFields'}]}"},
    {"BuildList", "{'type':'object','properties':{'builds':{'type':'array','items':{'$ref':'#/co"
                  "mponents/schemas/Build'}},'limit':{'type':'integer'},'next':{'type':'string'"
                  "}}}"},
    {"BuildRunCreate",
     "{'allOf':[{'$ref':'#/components/schemas/BuildFields'},{'type':'object','required':['name']"
     ",'properties':{'name':{'$ref':'#/components/schemas/Name'},'build_name':{'$ref':'#/compone"
     "nts/schemas/Name'}}}],'description':'the source is required unless build_name is given: "
     "source_url (git) or source_upload (an upload)'}"},
    {"BuildStep", "{'type':'object','properties':{'name':{'type':'string'},'status':{'enum':['ru"
                  "nning','succeeded','failed','cached','skipped']},'started_at':{'type':'string"
                  "'},'duration_ms':{'type':'integer'},'detail':{'type':'string'}}}"},
    {"BuildRun",
     "{'allOf':[{'$ref':'#/components/schemas/BuildRunCreate'},{'type':'object','properties':{'"
     "id':{'type':'integer'},'project':{'type':'string'},'created_at':{'type':'string'},'starte"
     "d_at':{'type':['string','null']},'finished_at':{'type':['string','null']},'status':{'enum"
     "':['pending','running','succeeded','failed','cancelled']},'status_details':{'type':'objec"
     "t','properties':{'reason':{'type':['string','null'],'description':'why it failed: the st"
     "ep and the line'},'strategy':{'type':['string','null'],'description':'what detection ch"
     "ose'},'output_digest':{'type':['string','null']},'output_image_digest':{'type':'string',"
     "'description':'repository@digest: what a deploy uses'},'steps':{'type':'array','items':{"
     "'$ref':'#/components/schemas/BuildStep'}},'attempts':{'type':'integer'},'cancel_requeste"
     "d':{'type':'boolean'}}}}}]}"},
    {"BuildRunList", "{'type':'object','properties':{'build_runs':{'type':'array','items':{'$ref"
                     "':'#/components/schemas/BuildRun'}},'limit':{'type':'integer'},'next':{'ty"
                     "pe':'string'}}}"},
    {"BuildLogLines",
     "{'type':'object','properties':{'lines':{'type':'array','items':{'type':'object','properti"
     "es':{'ts':{'type':'string'},'step':{'type':'string','description':'builder, or the step"
     "'},'stream':{'enum':['stdout','stderr']},'line':{'type':'string'}}}},'next':{'type':'str"
     "ing','description':'cursor for ?after='},'finished':{'type':'boolean','description':'the "
     "run has ended: no line will follow'}}}"},
    {"Meta", "{'type':'object','properties':{'id':{'type':'integer','readOnly':true},"
             "'project':{'type':'string','readOnly':true},'created_at':{'type':'string',"
             "'readOnly':true},'updated_at':{'type':'string','readOnly':true},'generation':{"
             "'type':'integer','readOnly':true},'entity_tag':{'type':'string','readOnly':true,"
             "'description':'the ETag, for If-Match'}}}"},
    {"ConfigMap",
     "{'allOf':[{'$ref':'#/components/schemas/Meta'},{'type':'object','required':['data'],"
     "'properties':{'name':{'$ref':'#/components/schemas/Name'},'data':{'type':'object',"
     "'maxProperties':100,'propertyNames':{'pattern':'^[-._a-zA-Z0-9]{1,253}$'},"
     "'additionalProperties':{'type':'string'}},'data_keys':{'type':'array','readOnly':true,"
     "'items':{'type':'string'}}}}]}"},
    {"EnvVar",
     "{'description':'One environment variable, or every key of a secret or config map. A refe"
     "renced secret or config map need not exist when the app, job or run is created (as in Co"
     "de Engine): an instance whose reference is missing fails permanently with a reason namin"
     "g it (a job index: failed, not retried).', 'oneOf':[ {'type':'object','required':['name'"
     ",'value'],'additionalProperties':false,'properties':{'type':{'const':'literal','default'"
     ":'literal'},'name':{'$ref':'#/components/schemas/EnvName'},'value':{'type':'string','max"
     "Length':32768}}}, {'type':'object','required':['type','reference'],'additionalProperties"
     "':false,'properties':{'type':{'enum':['secret_full_reference','config_map_full_reference"
     "']},'reference':{'$ref':'#/components/schemas/Name'},'prefix':{'type':'string','maxLengt"
     "h':64,'description':'each key K becomes the variable prefix+K'}}}, {'type':'object','req"
     "uired':['type','reference','key','name'],'additionalProperties':false,'properties':{'typ"
     "e':{'enum':['secret_key_reference','config_map_key_reference']},'reference':{'$ref':'#/c"
     "omponents/schemas/Name'},'key':{'type':'string','pattern':'^[-._a-zA-Z0-9]{1,253}$'},'na"
     "me':{'$ref':'#/components/schemas/EnvName'}}}]}"},
    {"EnvName", "{'type':'string','pattern':'^[A-Za-z_][A-Za-z0-9_]*$','maxLength':256}"},
    {"VolumeMount",
     "{'type':'object','required':['type','reference','mount_path'],'additionalProperties':fal"
     "se,'description':'The keys of a secret (files 0400) or config map (0444) as files in a r"
     "ead-only directory. The reference need not exist at create time (see EnvVar).','properti"
     "es':{'type':{'enum':['secret','config_map']},'reference':{'$ref':'#/components/schemas/N"
     "ame'},'mount_path':{'type':'string','maxLength':256,'description':'absolute and normaliz"
     "ed, not / and not under /proc, /sys or /dev; unique in the list'},'name':{'$ref':'#/comp"
     "onents/schemas/Name'}}}"},
    {"Probe",
     "{'type':'object','additionalProperties':false,'properties':{'type':{'enum':['tcp','http'"
     "],'default':'tcp'},'path':{'type':'string','maxLength':256,'description':'http only; def"
     "ault /'},'port':{'type':'integer','minimum':1,'maximum':65535,'description':'default ima"
     "ge_port'},'initial_delay':{'type':'integer','minimum':0,'maximum':3600,'default':0},'int"
     "erval':{'type':'integer','minimum':1,'maximum':3600,'default':10},'timeout':{'type':'int"
     "eger','minimum':1,'maximum':3600,'default':1},'failure_threshold':{'type':'integer','min"
     "imum':1,'maximum':10,'default':3}}}"},
    {"Secret",
     "{'type':'object','required':['data'],'description':'Values are encrypted at rest (AES-25"
     "6-GCM) and never returned: every read, whatever the role of the key, shows data_keys onl"
     "y.','properties':{ 'name':{'$ref':'#/components/schemas/Name'},'project':{'type':'string"
     "','readOnly':true},'id':{'type':'integer','readOnly':true}, 'format':{'enum':['generic',"
     "'registry','tls'],'default':'generic','description':'registry: keys server (host[:port])"
     ", username, password and optionally email; tls: keys tls_cert (PEM certificates) and tls"
     "_key (one PEM private key). PUT without format keeps the format.'}, 'data':{'type':'obje"
     "ct','writeOnly':true,'maxProperties':100,'propertyNames':{'pattern':'^[-._a-zA-Z0-9]{1,2"
     "53}$'},'additionalProperties':{'type':'string'}}, 'data_keys':{'type':'array','readOnly'"
     ":true,'items':{'type':'string'}}, 'generation':{'type':'integer','readOnly':true},'entit"
     "y_tag':{'type':'string','readOnly':true}, 'created_at':{'type':'string','readOnly':true}"
     ",'updated_at':{'type':'string','readOnly':true}}}"},
};

static json_t *param(const char *name, const char *in, const char *type, const char *desc)
{
    return json_pack("{s:s,s:s,s:b,s:{s:s},s:s}", "name", name, "in", in, "required",
                     strcmp(in, "path") == 0, "schema", "type", type, "description", desc);
}

static json_t *problem_response(const char *desc)
{
    return json_pack("{s:s,s:{s:{s:{s:s}}}}", "description", desc, "content",
                     "application/problem+json", "schema", "$ref", "#/components/schemas/Problem");
}

static json_t *operation(const struct op *o)
{
    json_t *op = json_pack("{s:s,s:s}", "operationId", o->id, "summary", o->summary);
    json_t *params = json_array();
    if (strstr(o->path, "{project}"))
        json_array_append_new(params, param("project", "path", "string", "project name"));
    if (strstr(o->path, "{name}"))
        json_array_append_new(params, param("name", "path", "string", "resource name"));
    if (strstr(o->path, "{action}"))
        json_array_append_new(params, param("action", "path", "string", "cordon|uncordon|drain"));
    if (strcmp(o->method, "get") == 0 && o->response && strstr(o->response, "List")) {
        json_array_append_new(params,
                              param("limit", "query", "integer", "page size, 1-1000 (100)"));
        json_array_append_new(
            params, param("start", "query", "string", "the \"next\" token of the previous page"));
    }
    if (strcmp(o->method, "post") == 0)
        json_array_append_new(params, param("Idempotency-Key", "header", "string",
                                            "a retry with the same key and request gets the "
                                            "first reply (kept 24 h); another request: 422"));
    if (strcmp(o->method, "patch") == 0 || strcmp(o->method, "put") == 0)
        json_array_append_new(params, param("If-Match", "header", "string",
                                            "the resource's ETag; 412 when it changed"));
    if (json_array_size(params))
        json_object_set_new(op, "parameters", params);
    else
        json_decref(params);
    if (o->request) {
        char ref[96];
        snprintf(ref, sizeof(ref), "#/components/schemas/%s", o->request);
        json_object_set_new(op, "requestBody",
                            json_pack("{s:b,s:{s:{s:{s:s}}}}", "required", 1, "content",
                                      "application/json", "schema", "$ref", ref));
    }
    json_t *responses = json_object();
    char st[8];
    snprintf(st, sizeof(st), "%d", o->status);
    if (strcmp(o->path, "/openapi.json") == 0) {
        json_object_set_new(responses, st, json_pack("{s:s}", "description", "OpenAPI 3.1"));
    } else if (o->response || stream_media(o)) {
        json_t *content = json_object();
        if (o->response) {
            char ref[96];
            snprintf(ref, sizeof(ref), "#/components/schemas/%s", o->response);
            json_object_set_new(content, "application/json",
                                json_pack("{s:{s:s}}", "schema", "$ref", ref));
        }
        if (stream_media(o))
            json_object_set_new(content, stream_media(o),
                                json_pack("{s:{s:s}}", "schema", "type", "string"));
        json_object_set_new(responses, st,
                            json_pack("{s:s,s:o}", "description", "OK", "content", content));
    } else {
        json_object_set_new(responses, st, json_pack("{s:s}", "description", "Done"));
    }
    if (strcmp(o->path, "/openapi.json") != 0) {
        json_object_set_new(responses, "400", problem_response("invalid request"));
        json_object_set_new(responses, "401", problem_response("missing or wrong API key"));
        json_object_set_new(responses, "403", problem_response("the key's role forbids it"));
        json_object_set_new(responses, "404",
                            problem_response("absent, or in a project the key cannot see"));
        json_object_set_new(responses, "429", problem_response("rate limited (Retry-After)"));
    }
    if (strcmp(o->method, "post") == 0) {
        json_object_set_new(responses, "409", problem_response("the name is taken"));
        json_object_set_new(responses, "422",
                            problem_response("the Idempotency-Key was used for another request"));
    }
    if (o->request)
        json_object_set_new(responses, "413", problem_response("the body is over 1 MiB"));
    if (strcmp(o->method, "patch") == 0 || strcmp(o->method, "put") == 0)
        json_object_set_new(responses, "412", problem_response("If-Match does not match"));
    json_object_set_new(op, "responses", responses);
    if (strcmp(o->path, "/openapi.json") != 0)
        json_object_set_new(op, "security", json_pack("[{s:[]}]", "bearer"));
    return op;
}

static char *doc_text;

static void build_doc(void)
{
    _cleanup_json_ json_t *doc = json_pack(
        "{s:s,s:{s:s,s:s,s:s},s:{}}", "openapi", "3.1.0", "info", "title", "Loom API", "version",
        "1", "description",
        "Loom's public REST API. Authenticate with Authorization: Bearer <API key>. Errors are "
        "application/problem+json with a request_id. Events (CloudEvents 1.0 JSON) go out on "
        "NATS subjects loom.events.<project>.<kind>.",
        "paths");
    json_t *paths = json_object_get(doc, "paths");
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(ops); i++) {
        json_t *item = json_object_get(paths, ops[i].path);
        if (!item) {
            item = json_object();
            json_object_set_new(paths, ops[i].path, item);
        }
        json_object_set_new(item, ops[i].method, operation(&ops[i]));
    }
    json_t *components = json_pack("{s:{},s:{s:{s:s,s:s}}}", "schemas", "securitySchemes", "bearer",
                                   "type", "http", "scheme", "bearer");
    json_t *sch = json_object_get(components, "schemas");
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(schemas); i++) {
        json_t *s = json_loads(schemas[i][1], 0, NULL);
        if (!s)
            abort(); /* a broken literal above: the unit test catches it first */
        json_object_set_new(sch, schemas[i][0], s);
    }
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(schemas_sq); i++) {
        char *text = strdup(schemas_sq[i][1]);
        if (!text)
            abort();
        for (char *c = text; *c; c++)
            if (*c == '\'')
                *c = '"';
        json_t *s = json_loads(text, 0, NULL);
        free(text);
        if (!s)
            abort();
        json_object_set_new(sch, schemas_sq[i][0], s);
    }
    /* the spec fields, from the one table in common/spec.c */
    json_object_set_new(sch, "RunFields", loom_spec_schema(LOOM_K_RUNS, 0));
    json_object_set_new(sch, "JobFields", loom_spec_schema(LOOM_K_JOB, LOOM_K_APP));
    json_object_set_new(sch, "AppFields", loom_spec_schema(LOOM_K_APP, LOOM_K_JOBS));
    json_object_set_new(sch, "FunctionFields", loom_spec_schema(LOOM_K_FUNCTION, 0));
    json_object_set_new(sch, "BuildFields", loom_spec_schema(LOOM_K_BUILDS, 0));
    json_object_set_new(doc, "components", components);
    doc_text = json_dumps(doc, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
}

static pthread_once_t doc_once = PTHREAD_ONCE_INIT;

const char *api_openapi_text(void)
{
    pthread_once(&doc_once, build_doc);
    return doc_text;
}

void api_openapi(struct loom_http_req *req)
{
    const char *t = api_openapi_text();
    loom_http_reply(req, 200, "application/json", t, strlen(t));
}
