// tandem-bench --mode=colocate: does training on the serving device cost the online user
// anything, and does it harvest the idle time? For text, then images:
//   1. the solo service time of one request (sequential requests on an idle device) gives the
//      device's solo capacity;
//   2. at each load (--loads, fractions of that capacity) a Poisson trace of requests runs for
//      --window_seconds with the device to itself: p99 time to first token, p99 inter-token
//      latency (text) or p99 request latency (image);
//   3. a training job starts (the demo's recipe for that kind); its solo rate is measured with
//      no requests; then the very same traces run again beside it: the same latencies, the job's
//      rate, the device's inference busy share, and the preemption latency (the server's
//      tandem_preemption_seconds);
//   4. the table: latency ratios colocated / alone, and harvest = colocated training rate /
//      ((1 - inference busy share) x solo training rate).
// Needs tandemd with --metrics_listen, --data_dir holding the datasets, and a text and an image
// model. One run prints everything; ratios are what to compare on noisy machines.
#ifndef TANDEM_BENCH_COLOCATE_H_
#define TANDEM_BENCH_COLOCATE_H_

#include <memory>

#include <grpcpp/grpcpp.h>

namespace tandem::bench {

// Returns the process exit code.
int RunColocateBench(const std::shared_ptr<grpc::Channel>& channel);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_COLOCATE_H_
