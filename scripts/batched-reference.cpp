// llama.cpp's own batched greedy decoding, as the reference for `cmrm serve --parallel N`
// (scripts/bench-batch.sh). Built by scripts/batched-reference.sh against the very libraries
// cmrm's release build compiled; it uses llama.h's public API only.
//
//   batched-reference MODEL N_SEQ N_GEN [THREADS]
//
// One CPU context holds N_SEQ sequences in one unified KV cache. The same short chat prompt is
// prefilled into every sequence (one llama_decode per sequence), then every sequence generates
// N_GEN tokens greedily with ONE llama_decode per step carrying one token per sequence. End-of-
// generation tokens are never picked, so every sequence runs to N_GEN. A warm-up pass (prefill
// and two steps, then the cache cleared) runs first, so graph allocation is not timed.
//
// BATCHED_REFERENCE_TEXT=1 also prints what the first and the last sequence generated (stderr);
// BATCHED_REFERENCE_VERBOSE=1 keeps llama.cpp's log.
//
// Prints one JSON line:
//   {"n_seq":..,"n_gen":..,"threads":..,"n_prompt":..,"prefill_s":..,"gen_s":..,"tok_per_s":..}
// gen_s is the time of the N_GEN batched decodes and the argmax after each; tok_per_s is
// N_SEQ * N_GEN / gen_s (as llama-batched-bench's text-generation speed); prefill_s is the time
// of the N_SEQ prompt decodes.
#include "llama.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

static const char * PROMPT = "Describe a sunny beach in a few sentences.";

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static int default_threads() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) {
            return n;
        }
    }
    unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? (int) n : 1;
}

static double now_s() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

static bool parse_int(const char * s, int & out) {
    char * end = nullptr;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v <= 0 || v > 1 << 20) {
        return false;
    }
    out = (int) v;
    return true;
}

// The prompt as the model's chat template renders one user turn (llama.cpp's built-in template
// list), or the bare text when the template is missing or unknown.
static std::string chat_prompt(const llama_model * model) {
    const char * tmpl = llama_model_chat_template(model, nullptr);
    if (tmpl == nullptr) {
        return PROMPT;
    }
    llama_chat_message msg = {"user", PROMPT};
    std::vector<char> buf(4096);
    int32_t n = llama_chat_apply_template(tmpl, &msg, 1, true, buf.data(), (int32_t) buf.size());
    if (n > (int32_t) buf.size()) {
        buf.resize(n);
        n = llama_chat_apply_template(tmpl, &msg, 1, true, buf.data(), (int32_t) buf.size());
    }
    if (n < 0) {
        return PROMPT;
    }
    return std::string(buf.data(), n);
}

static std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text) {
    std::vector<llama_token> toks(text.size() + 16);
    int32_t n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), toks.data(),
                               (int32_t) toks.size(), /*add_special*/ true, /*parse_special*/ true);
    if (n < 0) {
        toks.resize(-n);
        n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), toks.data(),
                           (int32_t) toks.size(), true, true);
    }
    if (n < 0) {
        return {};
    }
    toks.resize(n);
    return toks;
}

static void batch_add(llama_batch & b, llama_token tok, llama_pos pos, llama_seq_id seq, bool logits) {
    b.token[b.n_tokens] = tok;
    b.pos[b.n_tokens] = pos;
    b.n_seq_id[b.n_tokens] = 1;
    b.seq_id[b.n_tokens][0] = seq;
    b.logits[b.n_tokens] = logits;
    b.n_tokens++;
}

// Argmax over the vocabulary, end-of-generation tokens excluded.
static llama_token greedy(const float * logits, const std::vector<char> & eog) {
    llama_token best = -1;
    float best_v = 0.0f;
    for (size_t t = 0; t < eog.size(); t++) {
        if (eog[t]) {
            continue;
        }
        if (best < 0 || logits[t] > best_v) {
            best = (llama_token) t;
            best_v = logits[t];
        }
    }
    return best;
}

struct Timing {
    double prefill_s;
    double gen_s;
};

// Prefills the prompt into every sequence and runs n_gen batched steps; false on a decode error.
static bool run(llama_context * ctx, const std::vector<llama_token> & prompt, int n_seq, int n_gen,
                const std::vector<char> & eog, Timing & t, std::vector<std::vector<llama_token>> * out) {
    llama_memory_clear(llama_get_memory(ctx), true);
    const int n_prompt = (int) prompt.size();
    llama_batch pb = llama_batch_init(n_prompt, 0, 1);
    llama_batch gb = llama_batch_init(n_seq, 0, 1);
    std::vector<llama_token> next(n_seq);
    bool ok = true;

    double t0 = now_s();
    for (int s = 0; s < n_seq && ok; s++) {
        pb.n_tokens = 0;
        for (int i = 0; i < n_prompt; i++) {
            batch_add(pb, prompt[i], i, s, i == n_prompt - 1);
        }
        if (llama_decode(ctx, pb) != 0) {
            fprintf(stderr, "batched-reference: prefill of sequence %d failed\n", s);
            ok = false;
            break;
        }
        next[s] = greedy(llama_get_logits_ith(ctx, -1), eog);
    }
    if (out) {
        out->assign(n_seq, {});
    }
    double t1 = now_s();

    for (int step = 0; step < n_gen && ok; step++) {
        gb.n_tokens = 0;
        for (int s = 0; s < n_seq; s++) {
            batch_add(gb, next[s], n_prompt + step, s, true);
            if (out) {
                (*out)[s].push_back(next[s]);
            }
        }
        if (llama_decode(ctx, gb) != 0) {
            fprintf(stderr, "batched-reference: decode at step %d failed\n", step);
            ok = false;
            break;
        }
        for (int s = 0; s < n_seq; s++) {
            next[s] = greedy(llama_get_logits_ith(ctx, s), eog);
        }
    }
    double t2 = now_s();

    llama_batch_free(pb);
    llama_batch_free(gb);
    t.prefill_s = t1 - t0;
    t.gen_s = t2 - t1;
    return ok;
}

int main(int argc, char ** argv) {
    int n_seq = 0, n_gen = 0, threads = default_threads();
    if (argc < 4 || argc > 5 || !parse_int(argv[2], n_seq) || !parse_int(argv[3], n_gen) ||
        (argc == 5 && !parse_int(argv[4], threads))) {
        fprintf(stderr, "usage: %s MODEL N_SEQ N_GEN [THREADS]\n", argv[0]);
        return 2;
    }
    if (!getenv("BATCHED_REFERENCE_VERBOSE")) {
        llama_log_set(quiet_log, nullptr);
    }
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (model == nullptr) {
        fprintf(stderr, "batched-reference: cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> prompt = tokenize(vocab, chat_prompt(model));
    if (prompt.empty()) {
        fprintf(stderr, "batched-reference: cannot tokenize the prompt\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<char> eog(n_vocab);
    for (int t = 0; t < n_vocab; t++) {
        eog[t] = llama_vocab_is_eog(vocab, t) ? 1 : 0;
    }

    const int n_prompt = (int) prompt.size();
    llama_context_params cp = llama_context_default_params();
    cp.n_seq_max = (uint32_t) n_seq;
    cp.kv_unified = true;
    cp.n_ctx = (uint32_t) std::max(512, n_seq * (n_prompt + n_gen + 8));
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    if (n_prompt > (int) cp.n_batch) {
        fprintf(stderr, "batched-reference: the prompt (%d tokens) exceeds n_batch\n", n_prompt);
        return 1;
    }
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        fprintf(stderr, "batched-reference: cannot create the context\n");
        return 1;
    }

    Timing t{};
    std::vector<std::vector<llama_token>> gen;
    bool ok = run(ctx, prompt, n_seq, std::min(n_gen, 2), eog, t, nullptr) &&  // warm-up
              run(ctx, prompt, n_seq, n_gen, eog, t, &gen);
    if (ok && getenv("BATCHED_REFERENCE_TEXT")) {
        // What the first and the last sequence generated (the tokens each step decoded), on stderr.
        for (int s : {0, n_seq - 1}) {
            std::string text;
            for (llama_token tok : gen[s]) {
                char piece[256];
                int n = llama_token_to_piece(vocab, tok, piece, sizeof(piece), 0, false);
                if (n > 0) {
                    text.append(piece, n);
                }
            }
            fprintf(stderr, "sequence %d: %s\n", s, text.c_str());
            if (n_seq == 1) {
                break;
            }
        }
    }
    if (ok) {
        printf("{\"n_seq\":%d,\"n_gen\":%d,\"threads\":%d,\"n_prompt\":%d,\"prefill_s\":%.4f,"
               "\"gen_s\":%.4f,\"tok_per_s\":%.2f}\n",
               n_seq, n_gen, threads, n_prompt, t.prefill_s, t.gen_s,
               (double) n_seq * n_gen / t.gen_s);
        fflush(stdout);
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return ok ? 0 : 1;
}
