/* labman-devllm: options, signals and the event loop. */
#define LM_LOG_MODULE "devllm"
#include "devllm/devllm.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <sodium.h>

#include "log/log.h"

static const char usage_text[] =
    "usage: labman-devllm [options]\n"
    "\n"
    "A small, fast, deterministic stand-in for an LLM runtime (Ollama, llama.cpp\n"
    "llama-server, vLLM or any OpenAI-compatible server), for tests and benchmarks.\n"
    "The same request always gets the same text; usage counts are exact, one token\n"
    "per whitespace-separated word.\n"
    "\n"
    "  --flavor F              openai | ollama | llamacpp | vllm (default openai):\n"
    "                          which runtime's routes, probes and errors to mimic\n"
    "  --listen HOST:PORT      default 127.0.0.1:11434 (ollama), :8080 (llamacpp),\n"
    "                          :8000 (vllm, openai)\n"
    "  --models A,B,C          model names (default llama3.2:1b)\n"
    "  --max-tokens N          natural answer length in tokens (default 16); a\n"
    "                          smaller max_tokens/num_predict ends with \"length\"\n"
    "  --tokens-per-sec N      generation speed per request (default 0 = no delay)\n"
    "  --ttft-ms N             delay before the first token (default 0)\n"
    "  --max-concurrent N      generation requests at once (default 0 = unlimited);\n"
    "                          beyond it: 429 (openai, vllm) or 503 (llamacpp, ollama)\n"
    "  --load-ms N             llamacpp/vllm/openai: answer 503 \"Loading model\" for\n"
    "                          N ms after start; ollama: time to load a model that\n"
    "                          is not loaded (reported as load_duration)\n"
    "  --ctx-len N             context length reported by probes (default 4096)\n"
    "  --seed N                seed of the generated text (default 0)\n"
    "  --max-body-bytes N      largest request body, else 413 (default 4194304)\n"
    "\n"
    "Fault injection (applies to inference routes only, never to probes):\n"
    "  --fail-rate P           answer this fraction (0..1) of requests with 500\n"
    "  --fail-after-tokens N   after N tokens, close the connection abruptly\n"
    "  --stall-ms N            halfway through an answer, pause for N ms\n"
    "  --drop-connection       close every connection without an answer\n"
    "\n"
    "  --log-level L           error | warn | info | debug (default info)\n"
    "  -h, --help              this text\n"
    "  -V, --version           print the version\n"
    "\n"
    "SIGTERM and SIGINT stop it at once, exit status 0. See docs/devllm.md.\n";

enum {
    OPT_FLAVOR = 256,
    OPT_LISTEN,
    OPT_MODELS,
    OPT_MAX_TOKENS,
    OPT_TPS,
    OPT_TTFT,
    OPT_MAX_CONC,
    OPT_LOAD,
    OPT_CTX,
    OPT_SEED,
    OPT_MAX_BODY,
    OPT_FAIL_RATE,
    OPT_FAIL_AFTER,
    OPT_STALL,
    OPT_DROP,
    OPT_LOG_LEVEL,
};

static const struct option long_opts[] = {
    {"flavor", required_argument, NULL, OPT_FLAVOR},
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"models", required_argument, NULL, OPT_MODELS},
    {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
    {"tokens-per-sec", required_argument, NULL, OPT_TPS},
    {"ttft-ms", required_argument, NULL, OPT_TTFT},
    {"max-concurrent", required_argument, NULL, OPT_MAX_CONC},
    {"load-ms", required_argument, NULL, OPT_LOAD},
    {"ctx-len", required_argument, NULL, OPT_CTX},
    {"seed", required_argument, NULL, OPT_SEED},
    {"max-body-bytes", required_argument, NULL, OPT_MAX_BODY},
    {"fail-rate", required_argument, NULL, OPT_FAIL_RATE},
    {"fail-after-tokens", required_argument, NULL, OPT_FAIL_AFTER},
    {"stall-ms", required_argument, NULL, OPT_STALL},
    {"drop-connection", no_argument, NULL, OPT_DROP},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static int
parse_uint(const char *name, const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    errno = 0;
    if (*s == '-' || *s == '\0')
        goto bad;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        goto bad;
    *out = v;
    return 0;
bad:
    fprintf(stderr, "labman-devllm: --%s wants a whole number from 0 to %llu, not '%s'\n", name,
            max, s);
    return -EINVAL;
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct event_base *base = arg;
    (void)what;
    log_info("signal %d: stopping", (int)sig);
    event_base_loopbreak(base);
}

static const int default_ports[] = {
    [LM_DEVLLM_OPENAI] = 8000,
    [LM_DEVLLM_OLLAMA] = 11434,
    [LM_DEVLLM_LLAMACPP] = 8080,
    [LM_DEVLLM_VLLM] = 8000,
};

static const char *const flavor_names[] = {
    [LM_DEVLLM_OPENAI] = "openai",
    [LM_DEVLLM_OLLAMA] = "ollama",
    [LM_DEVLLM_LLAMACPP] = "llamacpp",
    [LM_DEVLLM_VLLM] = "vllm",
};

static int
parse_args(int argc, char **argv, struct lm_devllm_opts *o, const char **listen)
{
    unsigned long long v;
    int c;

    while ((c = getopt_long(argc, argv, "hV", long_opts, NULL)) != -1) {
        const char *name = NULL;
        for (const struct option *lo = long_opts; lo->name; lo++)
            if (lo->val == c)
                name = lo->name;
        switch (c) {
        case OPT_FLAVOR: {
            size_t i;
            for (i = 0; i < LM_ARRAY_LEN(flavor_names); i++)
                if (strcmp(optarg, flavor_names[i]) == 0)
                    break;
            if (i == LM_ARRAY_LEN(flavor_names)) {
                fprintf(stderr, "labman-devllm: --flavor is openai, ollama, llamacpp or vllm, "
                                "not '%s'\n",
                        optarg);
                return -EINVAL;
            }
            o->flavor = (enum lm_devllm_flavor)i;
            break;
        }
        case OPT_LISTEN:
            *listen = optarg;
            break;
        case OPT_MODELS:
            o->models_csv = optarg;
            break;
        case OPT_MAX_TOKENS:
            if (parse_uint(name, optarg, LM_DEVLLM_MAX_GEN, &v))
                return -EINVAL;
            o->max_tokens = (unsigned)v;
            break;
        case OPT_TPS:
            if (parse_uint(name, optarg, 1000000, &v))
                return -EINVAL;
            o->tokens_per_sec = (unsigned)v;
            break;
        case OPT_TTFT:
        case OPT_LOAD:
        case OPT_STALL:
            if (parse_uint(name, optarg, 3600000, &v))
                return -EINVAL;
            if (c == OPT_TTFT)
                o->ttft_ms = (unsigned)v;
            else if (c == OPT_LOAD)
                o->load_ms = (unsigned)v;
            else
                o->stall_ms = (unsigned)v;
            break;
        case OPT_MAX_CONC:
            if (parse_uint(name, optarg, 1000000, &v))
                return -EINVAL;
            o->max_concurrent = (unsigned)v;
            break;
        case OPT_CTX:
            if (parse_uint(name, optarg, 10000000, &v) || v == 0)
                return -EINVAL;
            o->ctx_len = (unsigned)v;
            break;
        case OPT_SEED:
            if (parse_uint(name, optarg, UINT64_MAX, &v))
                return -EINVAL;
            o->seed = v;
            break;
        case OPT_MAX_BODY:
            if (parse_uint(name, optarg, 1ULL << 30, &v))
                return -EINVAL;
            o->max_body = (size_t)v;
            break;
        case OPT_FAIL_AFTER:
            if (parse_uint(name, optarg, LM_DEVLLM_MAX_GEN, &v))
                return -EINVAL;
            o->fail_after_tokens = (long)v;
            break;
        case OPT_FAIL_RATE: {
            char *end;
            double d = strtod(optarg, &end);
            if (*end || end == optarg || !(d >= 0.0 && d <= 1.0)) {
                fprintf(stderr, "labman-devllm: --fail-rate wants a fraction from 0 to 1, "
                                "not '%s'\n",
                        optarg);
                return -EINVAL;
            }
            o->fail_rate = d;
            break;
        }
        case OPT_DROP:
            o->drop_connection = true;
            break;
        case OPT_LOG_LEVEL: {
            enum lm_log_level level;
            if (lm_log_level_parse(optarg, &level)) {
                fprintf(stderr, "labman-devllm: --log-level is error, warn, info or debug\n");
                return -EINVAL;
            }
            lm_log_setup(level, LM_LOG_TEXT);
            break;
        }
        case 'h':
            fputs(usage_text, stdout);
            exit(0);
        case 'V':
            printf("labman-devllm %s\n", LM_VERSION);
            exit(0);
        default:
            fputs("Try 'labman-devllm --help'.\n", stderr);
            return -EINVAL;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "labman-devllm: unexpected argument '%s'\n", argv[optind]);
        return -EINVAL;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    static struct lm_devllm_server srv;
    struct lm_devllm_opts *o = &srv.opts;
    const char *listen = NULL;
    struct event *sigterm = NULL, *sigint = NULL;
    int rc = 1;

    lm_log_setup(LM_LOG_INFO, LM_LOG_TEXT);
    o->flavor = LM_DEVLLM_OPENAI;
    o->models_csv = "llama3.2:1b";
    o->max_tokens = 16;
    o->fail_after_tokens = -1;
    o->max_body = 4 * 1024 * 1024;
    o->ctx_len = 4096;
    if (parse_args(argc, argv, o, &listen))
        return 2;
    if (listen) {
        if (lm_hostport_parse(listen, o->host, sizeof(o->host), &o->port, true)) {
            fprintf(stderr, "labman-devllm: --listen wants HOST:PORT, not '%s'\n", listen);
            return 2;
        }
    } else {
        snprintf(o->host, sizeof(o->host), "127.0.0.1");
        o->port = default_ports[o->flavor];
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "labman-devllm: libsodium failed to initialise\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    srv.rng = o->seed ^ 0x5eedf00dULL;
    srv.started_ms = lm_now_ms();
    lm_buf_init(&srv.scratch, 256u * 1024 * 1024);
    if (lm_devllm_models_init(&srv))
        return 2;
    srv.base = event_base_new();
    if (!srv.base) {
        log_error("cannot create the event loop");
        return 1;
    }
    char listen_buf[300], err[256];
    if (!listen) {
        snprintf(listen_buf, sizeof(listen_buf), "%s:%d", o->host, o->port);
        listen = listen_buf;
    }
    struct lm_http_server_opts hopts = {
        .listen = listen,
        .max_header_bytes = LM_DEVLLM_HDR_MAX,
        .max_body_bytes = o->max_body,
        .server_name = "labman-devllm",
        .handler = lm_devllm_api_handle,
        .arg = &srv,
    };
    if (lm_http_server_new(&srv.http, srv.base, &hopts, err, sizeof(err))) {
        log_error("%s", err);
        goto out;
    }
    lm_http_server_set_max_body(srv.http, o->max_body); /* 0 is 0 here, not the default */
    sigterm = evsignal_new(srv.base, SIGTERM, on_signal, srv.base);
    sigint = evsignal_new(srv.base, SIGINT, on_signal, srv.base);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    log_info("labman-devllm %s: %s flavor on %s, %zu model(s), %u tokens/s, ttft %u ms",
             LM_VERSION, flavor_names[o->flavor], lm_http_server_address(srv.http), srv.nmodels,
             o->tokens_per_sec, o->ttft_ms);
    event_base_dispatch(srv.base);
    rc = 0;
    log_info("stopped after %llu requests (%llu cancelled by clients)",
             (unsigned long long)srv.requests_total, (unsigned long long)srv.cancelled_total);
out:
    lm_http_server_free(srv.http); /* streams in progress are cancelled first */
    lm_devllm_api_free_all(&srv);
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    event_base_free(srv.base);
    lm_buf_release(&srv.scratch);
    return rc;
}
