// tandem: command-line client of a tandemd server.
//   tandem [--server=HOST:PORT] generate [--model=M] [sampling flags] "prompt"
//   tandem [--server=HOST:PORT] models
//   tandem [--server=HOST:PORT] train submit|watch|list|get|cancel|pause|resume ...
//   tandem import --format=llama2c --checkpoint=model.bin --tokenizer=tokenizer.bin OUT_DIR
//   tandem export --format=llama2c MODEL_DIR OUT_DIR
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "client/commands.h"
#include "client/model_file_commands.h"

ABSL_FLAG(std::string, server, "",
          "tandemd address HOST:PORT (default: $TANDEM_SERVER, else localhost:50051)");
ABSL_FLAG(double, timeout, 0, "Deadline of the call in seconds (0: none)");
ABSL_FLAG(bool, tls, false, "Connect with TLS, trusting the system's CAs (implied by --tls_ca)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle the server's certificate must chain to");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (for a server with mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, token_file, "",
          "File holding the bearer token (default: $TANDEM_TOKEN; none: no token)");
ABSL_FLAG(std::string, model, "", "Model name (default: the server's default model)");
ABSL_FLAG(int, max_tokens, 0, "Tokens to generate at most (0: up to the context)");
ABSL_FLAG(double, temperature, 0.8, "Sampling temperature (0: greedy)");
ABSL_FLAG(int, top_k, 0, "Keep the k most likely tokens (0: off)");
ABSL_FLAG(double, top_p, 0.95, "Nucleus sampling mass in (0, 1]");
ABSL_FLAG(uint64_t, seed, 0,
          "Sampler seed (0: the server picks one and reports it); train submit: training seed");
ABSL_FLAG(std::string, o, "image.png", "image: output PNG (numbered with --n > 1)");
ABSL_FLAG(int, n, 1, "image: images to generate");
ABSL_FLAG(bool, grid, false, "image: with --n > 1, write one grid instead of numbered files");
ABSL_FLAG(int, steps, 0,
          "image: denoising steps (0: the model's default); train submit: optimizer steps");
ABSL_FLAG(double, guidance, 0, "image: classifier-free guidance scale (0: default, 1: none)");
ABSL_FLAG(std::string, negative, "", "image: negative prompt");
ABSL_FLAG(std::string, sampler, "ddim", "image: ddim or ddpm");
ABSL_FLAG(double, eta, 0, "image: DDIM eta in [0, 1]");
ABSL_FLAG(int, preview_every, 0, "image: ask for a preview every N steps");
ABSL_FLAG(bool, usage, true, "Print a summary line (reason, tokens, speed) on stderr");

// train: only the spec flags given on the command line are sent (over --spec's fields).
ABSL_FLAG(std::string, spec, "", "train submit: a TrainJobSpec in protobuf JSON");
ABSL_FLAG(bool, watch, false, "train submit: then watch the job");
ABSL_FLAG(std::string, samples_dir, ".", "train watch: folder for eval image samples");
ABSL_FLAG(bool, replay, false, "train watch: first show the job's past events (evals, logs)");
ABSL_FLAG(std::string, state, "", "train list: only these states, e.g. running,queued");
ABSL_FLAG(bool, history, false, "train get: also the loss history of every step");
ABSL_FLAG(bool, json, false, "train get: print the job as protobuf JSON");
ABSL_FLAG(std::string, name, "", "train submit: job name");
ABSL_FLAG(std::string, kind, "", "train submit: text or image");
ABSL_FLAG(std::string, dataset, "", "train submit: dataset path under the server's --data_dir");
ABSL_FLAG(std::string, init_from, "", "train submit: served model to fine-tune");
ABSL_FLAG(std::string, deploy_as, "", "train submit: model name to publish the result as");
ABSL_FLAG(bool, deploy_on_improvement, false,
          "train submit: also publish at each evaluation that improves");
ABSL_FLAG(int, priority, 0, "train submit: scheduling priority (higher first)");
ABSL_FLAG(int, batch_size, 0, "train submit: sequences or images per micro-step");
ABSL_FLAG(int, grad_accum, 0, "train submit: micro-steps per optimizer step");
ABSL_FLAG(double, max_seconds, 0,
          "train submit: train for this many seconds of wall-clock time (steps then optional)");
ABSL_FLAG(double, ema_decay, 0,
          "train submit: serve an exponential moving average of the weights with this decay");
ABSL_FLAG(double, min_snr_gamma, 0, "train submit: image jobs' min-SNR-gamma loss weighting");
ABSL_FLAG(double, dropout, 0, "train submit (text): residual dropout probability");
ABSL_FLAG(std::string, optimizer, "",
          "train submit: adamw (the default) or muon (Muon for the hidden matrices)");
ABSL_FLAG(std::string, precision, "",
          "train submit: fp32 (the default), bf16-mixed (text: bfloat16 matrix products) or "
          "auto (bf16-mixed where the device multiplies bfloat16 natively)");
ABSL_FLAG(int, chunk_rows, 0,
          "train submit: rows per chunk of a micro-step (0: calibrated by the server)");
ABSL_FLAG(double, lr, 0, "train submit: peak learning rate");
ABSL_FLAG(double, min_lr, 0, "train submit: final learning rate (cosine floor)");
ABSL_FLAG(int64_t, warmup_steps, 0, "train submit: linear warmup steps");
ABSL_FLAG(double, weight_decay, 0, "train submit: AdamW weight decay");
ABSL_FLAG(double, beta1, 0, "train submit: AdamW beta1");
ABSL_FLAG(double, beta2, 0, "train submit: AdamW beta2");
ABSL_FLAG(double, grad_clip, 0, "train submit: global gradient-norm clip");
ABSL_FLAG(int64_t, eval_every, 0, "train submit: steps between evaluations");
ABSL_FLAG(int64_t, checkpoint_every, 0, "train submit: steps between checkpoints");
ABSL_FLAG(double, caption_dropout, 0, "train submit (image): caption dropout probability");
ABSL_FLAG(double, holdout_fraction, 0, "train submit: held-out fraction of the dataset");
ABSL_FLAG(int, vocab_size, 0, "train submit: tokenizer vocabulary size");
ABSL_FLAG(int, layers, 0, "train submit (text): transformer layers");
ABSL_FLAG(int, dim, 0, "train submit (text): model width");
ABSL_FLAG(int, heads, 0, "train submit (text): attention heads");
ABSL_FLAG(int, kv_heads, 0, "train submit (text): key/value heads");
ABSL_FLAG(int, seq_len, 0, "train submit (text): context length");
ABSL_FLAG(int, hidden_dim, 0, "train submit (text): SwiGLU hidden width (0: derived)");
ABSL_FLAG(bool, tie_embeddings, false, "train submit (text): tie input and output embeddings");
ABSL_FLAG(int, image_size, 0, "train submit (image): image side in pixels");
ABSL_FLAG(int, channels, 0, "train submit (image): 1 (grey) or 3 (RGB)");
ABSL_FLAG(std::string, unet_widths, "", "train submit (image): U-Net widths, e.g. 32,64,128");
ABSL_FLAG(int, res_blocks, 0, "train submit (image): residual blocks per level");
ABSL_FLAG(std::string, attention_levels, "",
          "train submit (image): levels with attention, e.g. 1,2");
ABSL_FLAG(int, text_dim, 0, "train submit (image): caption encoder width");
ABSL_FLAG(int, text_layers, 0, "train submit (image): caption encoder layers");
ABSL_FLAG(int, text_heads, 0, "train submit (image): caption encoder heads");
ABSL_FLAG(int, text_seq_len, 0, "train submit (image): caption tokens");
ABSL_FLAG(int, diffusion_steps, 0, "train submit (image): training timesteps T");
ABSL_FLAG(bool, v_prediction, false, "train submit (image): v-prediction (else epsilon)");

// import / export: model files on this machine.
ABSL_FLAG(std::string, format, "", "import, export: the other side's format (llama2c)");
ABSL_FLAG(std::string, checkpoint, "", "import: the llama2.c checkpoint (model.bin, any version)");
ABSL_FLAG(std::string, tokenizer, "", "import: the llama2.c tokenizer.bin");
ABSL_FLAG(int, llama2c_version, 0,
          "export: checkpoint version: 0 (run.c), 1 (float32 with a header), 2 (Q8_0, runq.c)");
ABSL_FLAG(int, group_size, 0, "export --llama2c_version=2: values per Q8_0 scale (0: default)");

namespace {

constexpr char kUsage[] =
    "tandem [--server=HOST:PORT] <command> [flags]\n"
    "commands:\n"
    "  generate [--model=M] [--max_tokens=N] [--temperature=T] [--top_k=K] [--top_p=P]\n"
    "           [--seed=S] [--stop=STR]... \"prompt\"   stream a completion\n"
    "  image [--model=M] [--steps=N] [--guidance=G] [--seed=S] [--negative=TEXT]\n"
    "        [--sampler=ddim|ddpm] [--eta=E] [--n=N [--grid]] -o out.png \"caption\"\n"
    "                                                  generate images with a progress bar\n"
    "  models                                          list the served models\n"
    "  train submit [--spec=FILE.json] [--name=N --kind=text|image --dataset=D --steps=N\n"
    "               --lr=X ... model flags] [--watch]  submit a training job; prints its id\n"
    "  train watch ID [--samples_dir=DIR] [--replay]   follow a job (exit 0: SUCCEEDED)\n"
    "  train list [--state=running,queued,...]         list training jobs\n"
    "  train get ID [--history] [--json]               a job's details\n"
    "  train cancel|pause|resume ID                    change a job's state\n"
    "  import --format=llama2c --checkpoint=model.bin --tokenizer=tokenizer.bin OUT_DIR\n"
    "                                                  llama2.c's two files as a model directory\n"
    "  export --format=llama2c [--llama2c_version=0|1|2] MODEL_DIR OUT_DIR\n"
    "                                                  a text model as OUT_DIR/model.bin and\n"
    "                                                  OUT_DIR/tokenizer.bin for llama2.c's run.c\n";

// --stop may repeat (absl flags keep only the last value), so it is taken out of argv first.
std::vector<std::string> ExtractStops(int* argc, char** argv) {
  std::vector<std::string> stops;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string a = argv[i];
    if (absl::StartsWith(a, "--stop=")) {
      stops.push_back(a.substr(7));
    } else if (a == "--stop" && i + 1 < *argc) {
      stops.push_back(argv[++i]);
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  return stops;
}

// Names of the flags on the command line ("--lr=0.1", "--lr 0.1", "-lr", "--nowatch" gives
// "nowatch" and "watch"), up to "--". This Abseil has no public "was it given" query, and a
// comparison with the default would miss e.g. an explicit --deploy_on_improvement=false.
std::set<std::string> GivenFlags(int argc, char** argv) {
  std::set<std::string> names;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (a == "--") break;
    if (!absl::ConsumePrefix(&a, "-")) continue;
    absl::ConsumePrefix(&a, "-");
    const std::string name(a.substr(0, a.find('=')));
    names.insert(name);
    if (absl::StartsWith(name, "no")) names.insert(name.substr(2));
  }
  return names;
}

std::set<std::string>& Given() {
  static std::set<std::string> given;
  return given;
}

// The flag's value if it was given on the command line.
template <typename T>
std::optional<T> IfGiven(const absl::Flag<T>& flag) {
  if (Given().count(std::string(absl::GetFlagReflectionHandle(flag).Name())) == 0) {
    return std::nullopt;
  }
  return absl::GetFlag(flag);
}

tandem::client::TrainSpecFlags SpecFlags() {
  tandem::client::TrainSpecFlags f;
  f.name = IfGiven(FLAGS_name);
  f.kind = IfGiven(FLAGS_kind);
  f.dataset = IfGiven(FLAGS_dataset);
  f.init_from = IfGiven(FLAGS_init_from);
  f.deploy_as = IfGiven(FLAGS_deploy_as);
  f.deploy_on_improvement = IfGiven(FLAGS_deploy_on_improvement);
  f.priority = IfGiven(FLAGS_priority);
  if (auto steps = IfGiven(FLAGS_steps)) f.steps = *steps;
  f.batch_size = IfGiven(FLAGS_batch_size);
  f.grad_accum = IfGiven(FLAGS_grad_accum);
  f.chunk_rows = IfGiven(FLAGS_chunk_rows);
  f.max_seconds = IfGiven(FLAGS_max_seconds);
  f.ema_decay = IfGiven(FLAGS_ema_decay);
  f.min_snr_gamma = IfGiven(FLAGS_min_snr_gamma);
  f.dropout = IfGiven(FLAGS_dropout);
  f.optimizer = IfGiven(FLAGS_optimizer);
  f.precision = IfGiven(FLAGS_precision);
  f.lr = IfGiven(FLAGS_lr);
  f.min_lr = IfGiven(FLAGS_min_lr);
  f.warmup_steps = IfGiven(FLAGS_warmup_steps);
  f.weight_decay = IfGiven(FLAGS_weight_decay);
  f.beta1 = IfGiven(FLAGS_beta1);
  f.beta2 = IfGiven(FLAGS_beta2);
  f.grad_clip = IfGiven(FLAGS_grad_clip);
  f.eval_every = IfGiven(FLAGS_eval_every);
  f.checkpoint_every = IfGiven(FLAGS_checkpoint_every);
  f.seed = IfGiven(FLAGS_seed);
  f.caption_dropout = IfGiven(FLAGS_caption_dropout);
  f.holdout_fraction = IfGiven(FLAGS_holdout_fraction);
  f.vocab_size = IfGiven(FLAGS_vocab_size);
  f.layers = IfGiven(FLAGS_layers);
  f.dim = IfGiven(FLAGS_dim);
  f.heads = IfGiven(FLAGS_heads);
  f.kv_heads = IfGiven(FLAGS_kv_heads);
  f.seq_len = IfGiven(FLAGS_seq_len);
  f.hidden_dim = IfGiven(FLAGS_hidden_dim);
  f.tie_embeddings = IfGiven(FLAGS_tie_embeddings);
  f.image_size = IfGiven(FLAGS_image_size);
  f.channels = IfGiven(FLAGS_channels);
  f.unet_widths = IfGiven(FLAGS_unet_widths);
  f.res_blocks = IfGiven(FLAGS_res_blocks);
  f.attention_levels = IfGiven(FLAGS_attention_levels);
  f.text_dim = IfGiven(FLAGS_text_dim);
  f.text_layers = IfGiven(FLAGS_text_layers);
  f.text_heads = IfGiven(FLAGS_text_heads);
  f.text_seq_len = IfGiven(FLAGS_text_seq_len);
  f.diffusion_steps = IfGiven(FLAGS_diffusion_steps);
  f.v_prediction = IfGiven(FLAGS_v_prediction);
  return f;
}

// tandem train <sub> ...: args[0] is the program, args[1] "train".
int Train(const tandem::client::ConnectOptions& connect, const std::vector<char*>& args) {
  namespace tc = tandem::client;
  if (args.size() < 3) {
    std::fprintf(stderr, "tandem: train needs a subcommand: submit, watch, list, get, cancel, "
                 "pause or resume\n");
    return 2;
  }
  const std::string sub = args[2];
  const size_t rest = args.size() - 3;
  auto need_id = [&]() -> bool {
    if (rest == 1) return true;
    std::fprintf(stderr, "tandem: train %s takes one job id\n", sub.c_str());
    return false;
  };
  if (sub == "submit") {
    if (rest != 0) {
      std::fprintf(stderr,
                   "tandem: train submit takes flags only (--spec=FILE.json, --name=...)\n");
      return 2;
    }
    tc::TrainSubmitOptions o;
    o.spec_file = absl::GetFlag(FLAGS_spec);
    o.flags = SpecFlags();
    o.watch = absl::GetFlag(FLAGS_watch);
    o.watch_options.samples_dir = absl::GetFlag(FLAGS_samples_dir);
    return tc::TrainSubmit(connect, o);
  }
  if (sub == "watch") {
    if (!need_id()) return 2;
    tc::TrainWatchOptions o;
    o.samples_dir = absl::GetFlag(FLAGS_samples_dir);
    o.replay = absl::GetFlag(FLAGS_replay);
    return tc::TrainWatch(connect, args[3], o);
  }
  if (sub == "list") {
    if (rest != 0) {
      std::fprintf(stderr, "tandem: train list takes no arguments (--state=running,queued)\n");
      return 2;
    }
    return tc::TrainList(connect, absl::GetFlag(FLAGS_state));
  }
  if (sub == "get") {
    if (!need_id()) return 2;
    return tc::TrainGet(connect, args[3], absl::GetFlag(FLAGS_history), absl::GetFlag(FLAGS_json));
  }
  if (sub == "cancel" || sub == "pause" || sub == "resume") {
    if (!need_id()) return 2;
    const tc::TrainAction action = sub == "cancel"  ? tc::TrainAction::kCancel
                                   : sub == "pause" ? tc::TrainAction::kPause
                                                    : tc::TrainAction::kResume;
    return tc::TrainControl(connect, action, args[3]);
  }
  std::fprintf(stderr, "tandem: unknown train subcommand \"%s\"\n%s", sub.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<std::string> stops = ExtractStops(&argc, argv);
  Given() = GivenFlags(argc, argv);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  tandem::client::ConnectOptions connect;
  connect.server = absl::GetFlag(FLAGS_server);
  if (connect.server.empty()) {
    const char* env = std::getenv("TANDEM_SERVER");
    connect.server = env && *env ? env : "localhost:50051";
  }
  connect.timeout_seconds = absl::GetFlag(FLAGS_timeout);
  absl::StatusOr<tandem::client::ChannelSecurity> security = tandem::client::LoadChannelSecurity(
      {absl::GetFlag(FLAGS_tls), absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert),
       absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_token_file)});
  if (!security.ok()) {
    std::fprintf(stderr, "tandem: %s\n", std::string(security.status().message()).c_str());
    return 2;
  }
  connect.security = *std::move(security);
  const std::string command = args[1];
  if (command == "generate") {
    if (args.size() != 3) {
      std::fprintf(stderr, "tandem: generate takes one prompt argument (quote it)\n");
      return 2;
    }
    tandem::client::GenerateOptions o;
    o.model = absl::GetFlag(FLAGS_model);
    o.prompt = args[2];
    if (absl::GetFlag(FLAGS_max_tokens) != 0) o.max_tokens = absl::GetFlag(FLAGS_max_tokens);
    o.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
    o.top_k = absl::GetFlag(FLAGS_top_k);
    o.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
    o.seed = absl::GetFlag(FLAGS_seed);
    o.stop = stops;
    o.show_usage = absl::GetFlag(FLAGS_usage);
    return tandem::client::Generate(connect, o);
  }
  if (command == "image") {
    if (args.size() != 3) {
      std::fprintf(stderr, "tandem: image takes one caption argument (quote it)\n");
      return 2;
    }
    tandem::client::ImageOptions o;
    o.model = absl::GetFlag(FLAGS_model);
    o.prompt = args[2];
    o.negative_prompt = absl::GetFlag(FLAGS_negative);
    o.output = absl::GetFlag(FLAGS_o);
    o.n = absl::GetFlag(FLAGS_n);
    o.grid = absl::GetFlag(FLAGS_grid);
    o.steps = absl::GetFlag(FLAGS_steps);
    o.guidance = static_cast<float>(absl::GetFlag(FLAGS_guidance));
    o.seed = absl::GetFlag(FLAGS_seed);
    o.sampler = absl::GetFlag(FLAGS_sampler);
    o.eta = static_cast<float>(absl::GetFlag(FLAGS_eta));
    o.preview_every = absl::GetFlag(FLAGS_preview_every);
    o.progress = absl::GetFlag(FLAGS_usage);
    return tandem::client::GenerateImage(connect, o);
  }
  if (command == "models") {
    if (args.size() != 2) {
      std::fprintf(stderr, "tandem: models takes no arguments\n");
      return 2;
    }
    return tandem::client::ListModels(connect);
  }
  if (command == "train") return Train(connect, args);
  if (command == "import") {
    if (args.size() != 3) {
      std::fprintf(stderr, "tandem: import takes one OUT_DIR argument\n");
      return 2;
    }
    tandem::client::ImportOptions o;
    o.format = absl::GetFlag(FLAGS_format);
    o.checkpoint = absl::GetFlag(FLAGS_checkpoint);
    o.tokenizer = absl::GetFlag(FLAGS_tokenizer);
    o.out_dir = args[2];
    return tandem::client::Import(o);
  }
  if (command == "export") {
    if (args.size() != 4) {
      std::fprintf(stderr, "tandem: export takes a MODEL_DIR and an OUT_DIR\n");
      return 2;
    }
    tandem::client::ExportOptions o;
    o.format = absl::GetFlag(FLAGS_format);
    o.model = args[2];
    o.out_dir = args[3];
    o.version = absl::GetFlag(FLAGS_llama2c_version);
    o.group_size = absl::GetFlag(FLAGS_group_size);
    return tandem::client::Export(o);
  }
  std::fprintf(stderr, "tandem: unknown command \"%s\"\n%s", command.c_str(), kUsage);
  return 2;
}
