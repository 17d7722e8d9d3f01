/* The API's routes; openapi.c documents each one (a unit test checks). */
#include "api.h"

const struct loom_http_route api_routes[] = {
    {"GET", "/openapi.json", api_openapi},
    {"GET", "/v1/projects", api_projects_list},
    {"POST", "/v1/projects", api_projects_create},
    {"GET", "/v1/projects/{}", api_projects_get},
    {"DELETE", "/v1/projects/{}", api_projects_delete},

    {"POST", "/v1/projects/{}/jobs", api_jobs_create},
    {"GET", "/v1/projects/{}/jobs", api_jobs_list},
    {"GET", "/v1/projects/{}/jobs/{}", api_jobs_get},
    {"PATCH", "/v1/projects/{}/jobs/{}", api_jobs_update},
    {"DELETE", "/v1/projects/{}/jobs/{}", api_jobs_delete},

    {"POST", "/v1/projects/{}/job_runs", api_jobruns_create},
    {"GET", "/v1/projects/{}/job_runs", api_jobruns_list},
    {"GET", "/v1/projects/{}/job_runs/{}", api_jobruns_get},
    {"DELETE", "/v1/projects/{}/job_runs/{}", api_jobruns_delete},
    {"GET", "/v1/projects/{}/job_runs/{}/logs", api_jobruns_logs},
    {"POST", "/v1/projects/{}/job_runs/{}/cancel", api_jobruns_cancel},
    {"POST", "/v1/projects/{}/job_runs/{}/resubmit", api_jobruns_resubmit},

    {"POST", "/v1/projects/{}/apps", api_apps_create},
    {"GET", "/v1/projects/{}/apps", api_apps_list},
    {"GET", "/v1/projects/{}/apps/{}", api_apps_get},
    {"PATCH", "/v1/projects/{}/apps/{}", api_apps_update},
    {"DELETE", "/v1/projects/{}/apps/{}", api_apps_delete},
    {"GET", "/v1/projects/{}/apps/{}/instances", api_apps_instances},
    {"GET", "/v1/projects/{}/apps/{}/revisions", api_apps_revisions},
    {"GET", "/v1/projects/{}/apps/{}/logs", api_apps_logs},

    {"POST", "/v1/projects/{}/functions", api_functions_create},
    {"GET", "/v1/projects/{}/functions", api_functions_list},
    {"GET", "/v1/projects/{}/functions/{}", api_functions_get},
    {"PATCH", "/v1/projects/{}/functions/{}", api_functions_update},
    {"DELETE", "/v1/projects/{}/functions/{}", api_functions_delete},
    {"GET", "/v1/projects/{}/functions/{}/activations", api_functions_activations},
    {"GET", "/v1/projects/{}/functions/{}/logs", api_functions_logs},
    {"GET", "/v1/function_runtimes", api_function_runtimes},

    {"POST", "/v1/projects/{}/uploads", api_uploads_create},
    {"GET", "/v1/projects/{}/uploads/{}", api_uploads_get},

    {"POST", "/v1/projects/{}/builds", api_builds_create},
    {"GET", "/v1/projects/{}/builds", api_builds_list},
    {"GET", "/v1/projects/{}/builds/{}", api_builds_get},
    {"PATCH", "/v1/projects/{}/builds/{}", api_builds_update},
    {"DELETE", "/v1/projects/{}/builds/{}", api_builds_delete},

    {"POST", "/v1/projects/{}/build_runs", api_buildruns_create},
    {"GET", "/v1/projects/{}/build_runs", api_buildruns_list},
    {"GET", "/v1/projects/{}/build_runs/{}", api_buildruns_get},
    {"DELETE", "/v1/projects/{}/build_runs/{}", api_buildruns_delete},
    {"POST", "/v1/projects/{}/build_runs/{}/cancel", api_buildruns_cancel},
    {"GET", "/v1/projects/{}/build_runs/{}/logs", api_buildruns_logs},
    {"GET", "/v1/projects/{}/usage", api_usage_get},

    {"POST", "/v1/projects/{}/secrets", api_secrets_create},
    {"GET", "/v1/projects/{}/secrets", api_secrets_list},
    {"GET", "/v1/projects/{}/secrets/{}", api_secrets_get},
    {"PUT", "/v1/projects/{}/secrets/{}", api_secrets_replace},
    {"DELETE", "/v1/projects/{}/secrets/{}", api_secrets_delete},

    {"POST", "/v1/projects/{}/config_maps", api_configmaps_create},
    {"GET", "/v1/projects/{}/config_maps", api_configmaps_list},
    {"GET", "/v1/projects/{}/config_maps/{}", api_configmaps_get},
    {"PUT", "/v1/projects/{}/config_maps/{}", api_configmaps_replace},
    {"DELETE", "/v1/projects/{}/config_maps/{}", api_configmaps_delete},

    {"GET", "/v1/admin/nodes", api_admin_nodes_list},
    {"POST", "/v1/admin/nodes/{}/{}", api_admin_nodes_action},
    {"GET", "/v1/admin/keys", api_admin_keys_list},
    {"POST", "/v1/admin/keys", api_admin_keys_create},
    {"DELETE", "/v1/admin/keys/{}", api_admin_keys_revoke},
    {"GET", "/v1/admin/projects/{}/quota", api_admin_quota_get},
    {"PUT", "/v1/admin/projects/{}/quota", api_admin_quota_put},
    {"GET", "/v1/admin/usage/export", api_admin_usage_export},
};

const size_t api_nroutes = sizeof(api_routes) / sizeof(api_routes[0]);

const struct loom_http_spool api_spools[] = {
    {api_uploads_create, &api_cfg.max_upload},
};

const size_t api_nspools = sizeof(api_spools) / sizeof(api_spools[0]);
