/* Live-migrates one VM in SimGrid with the parameters `dirtytrace simgrid --json` fitted to a
 * trace, and prints the migration time.
 *
 *   dirtytrace simgrid TRACE --migration-speed 1Gbit/s --json > params.json            (whole trace)
 *   dirtytrace simgrid TRACE --start 60s --migration-speed 1Gbit/s --json > params.json (a migration at 60 s)
 *   examples/simgrid/build.sh /tmp/migrate && /tmp/migrate params.json
 *
 * Stage 1 sends `round0_bytes` when the JSON has it (the `--start` parameters: the bytes of a
 * migration's first round, which is not the guest's RAM), else `ramsize_bytes`.
 *
 * Options: --bandwidth B    link bandwidth in bytes/s (default: migration_speed_bytes_per_s)
 *          --load U         cores the VM keeps busy (default: the JSON's cpu_util)
 *          --max-rounds N   stage-2 rounds before giving up (default 1000; SimGrid has no limit
 *                           and would loop until its 10^7 s timeout)
 *          --json           print a JSON object instead of one line
 * SimGrid's own options (--cfg=..., --log=...) are accepted too.
 * Exit status: 0 when the migration converged, 3 when it did not within --max-rounds, 1 on
 * errors, 2 on bad usage.
 *
 * The platform: two hosts of 1 Gflop/s, each with as many cores as the VM, joined by one link
 * of the given bandwidth and zero latency. The network model is CM02 with cross-traffic off:
 * with those settings a transfer gets exactly the link's bandwidth (LV08, the default, applies
 * a bandwidth factor of 0.97, and cross-traffic adds a reverse flow of 5 %), so the migration
 * stream runs at min(link bandwidth, migration speed).
 *
 * The VM runs one actor per core that computes forever, and the VM is bounded to
 * load × host speed: SimGrid dirties memory in proportion to the flops a VM computes
 * (dp_intensity × migration_speed / host_speed bytes per flop).
 *
 * The rounds are observed from outside the plugin: every transfer on the migration's mailbox
 * is one round (stage 3 is the one sent with the VM suspended). */

#include <simgrid/plugins/live_migration.h>
#include <simgrid/s4u.hpp>
#include <simgrid/version.h>
#include <simgrid/vm.h>

#define BOOST_BIND_GLOBAL_PLACEHOLDERS // quiets a deprecation note inside Boost 1.74
#include <boost/property_tree/json_parser.hpp>
#include <boost/property_tree/ptree.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace sg4 = simgrid::s4u;

XBT_LOG_NEW_DEFAULT_CATEGORY(dirtytrace_migrate, "dirtytrace's SimGrid migration example");

static void usage(const char* argv0)
{
  std::fprintf(stderr, "usage: %s PARAMS.json [--bandwidth BYTES_PER_S] [--load CORES] [--max-rounds N] [--json]\n",
               argv0);
  std::exit(2);
}

/* One transfer on the migration's mailbox. */
struct Round {
  int stage;
  double start_s;
  double bytes;
};

int main(int argc, char** argv)
{
  sg4::Engine e(&argc, argv); // consumes SimGrid's own --cfg/--log options
  std::string params_path;
  double bandwidth = -1;
  double load      = -1;
  long max_rounds  = 1000;
  bool json        = false;
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "--bandwidth") == 0 && i + 1 < argc)
      bandwidth = std::atof(argv[++i]);
    else if (std::strcmp(argv[i], "--load") == 0 && i + 1 < argc)
      load = std::atof(argv[++i]);
    else if (std::strcmp(argv[i], "--max-rounds") == 0 && i + 1 < argc)
      max_rounds = std::atol(argv[++i]);
    else if (std::strcmp(argv[i], "--json") == 0)
      json = true;
    else if (argv[i][0] != '-' && params_path.empty())
      params_path = argv[i];
    else
      usage(argv[0]);
  }
  if (params_path.empty() || max_rounds < 0)
    usage(argv[0]);

  boost::property_tree::ptree p;
  double ramsize;
  double intensity;
  double ws;
  double speed;
  std::string ramsize_key = "round0_bytes";
  try {
    boost::property_tree::read_json(params_path, p);
    if (not p.get_child_optional(ramsize_key))
      ramsize_key = "ramsize_bytes";
    ramsize   = p.get<double>(ramsize_key);
    intensity = p.get<double>("dp_intensity");
    ws        = p.get<double>("working_set_memory_bytes");
    speed     = p.get<double>("migration_speed_bytes_per_s");
    if (load < 0)
      load = p.get<double>("cpu_util", 1.0);
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "%s: %s (give the JSON of dirtytrace simgrid --json)\n", params_path.c_str(), ex.what());
    return 1;
  }
  if (bandwidth <= 0)
    bandwidth = speed;
  if (!(ramsize > 0 && speed > 0 && bandwidth > 0 && load >= 0 && intensity >= 0 && ws >= 0)) {
    std::fprintf(stderr,
                 "%s: need %s > 0, migration_speed_bytes_per_s > 0, bandwidth > 0, load >= 0, dp_intensity >= 0 and "
                 "working_set_memory_bytes >= 0\n",
                 params_path.c_str(), ramsize_key.c_str());
    return 1;
  }

  sg_vm_live_migration_plugin_init(); // before the platform exists
  sg4::Engine::set_config("network/model:CM02");
  sg4::Engine::set_config("network/crosstraffic:0");

  const double host_speed = 1e9;
  const int cores         = std::max(1, static_cast<int>(std::ceil(load - 1e-9)));
  auto* zone              = sg4::create_full_zone("world");
  sg4::Host* src          = zone->create_host("src", host_speed)->set_core_count(cores)->seal();
  sg4::Host* dst          = zone->create_host("dst", host_speed)->set_core_count(cores)->seal();
  const sg4::Link* link   = zone->create_link("link", bandwidth)->set_latency(0)->seal();
  zone->add_route(src->get_netpoint(), dst->get_netpoint(), nullptr, nullptr, {sg4::LinkInRoute(link)}, true);
  zone->seal();

  sg4::VirtualMachine* vm = src->create_vm("vm", cores);
  vm->set_ramsize(static_cast<size_t>(ramsize));
  sg_vm_set_dirty_page_intensity(vm, intensity);
  sg_vm_set_working_set_memory(vm, static_cast<sg_size_t>(ws));
  sg_vm_set_migration_speed(vm, speed);
  vm->start();
  if (load > 0) {
    vm->set_bound(load * host_speed);
    for (int c = 0; c < cores; c++)
      // Enough work for the whole run: 1e7 s of one core. Daemons end with the migrator.
      sg4::Actor::create("worker", vm, [host_speed] { sg4::this_actor::execute(host_speed * 1e7); })->daemonize();
  }

  // The plugin's stage 2 has no round limit: count its transfers, and past --max-rounds wake a
  // watchdog that ends the simulation.
  std::vector<Round> rounds;
  long stage2       = 0;
  double stopped_at = -1;
  auto limit        = sg4::Semaphore::create(0);
  const std::string data_mailbox = "__mbox_mig_src_dst:";
  sg4::Comm::on_send_cb([&](sg4::Comm const& c) {
    if (c.get_mailbox() == nullptr || c.get_mailbox()->get_name().rfind(data_mailbox, 0) != 0 || stopped_at >= 0)
      return;
    const int stage = rounds.empty() ? 1 : vm->get_state() == sg4::VirtualMachine::State::SUSPENDED ? 3 : 2;
    if (stage == 2 && ++stage2 > max_rounds) {
      stopped_at = sg4::Engine::get_clock();
      limit->release();
      return;
    }
    rounds.push_back({stage, sg4::Engine::get_clock(), c.get_remaining()});
  });
  sg4::Actor::create("watchdog", src, [limit] {
    limit->acquire();
    sg4::Actor::kill_all();
  })->daemonize();

  double migration_time = -1;
  sg4::Actor::create("migrator", src, [vm, dst, &migration_time] {
    const double t0 = sg4::Engine::get_clock();
    sg_vm_migrate(vm, dst);
    migration_time = sg4::Engine::get_clock() - t0;
  });
  e.run();

  const bool converged = migration_time >= 0;
  if (not converged && stopped_at < 0) {
    std::fprintf(stderr, "the migration did not finish, and the round limit was not reached\n");
    return 1;
  }
  double transferred = 0;
  for (const Round& r : rounds)
    transferred += r.bytes;
  const double downtime =
      converged && not rounds.empty() && rounds.back().stage == 3 ? migration_time - rounds.back().start_s : 0;
  const long precopy_rounds = 1 + std::min(stage2, max_rounds);
  if (json) {
    std::string per_round;
    for (const Round& r : rounds)
      per_round += (per_round.empty() ? "" : ", ") + std::to_string(static_cast<unsigned long long>(r.bytes));
    std::printf("{\"converged\": %s, \"migration_time_s\": ", converged ? "true" : "false");
    if (converged)
      std::printf("%.9f", migration_time);
    else
      std::printf("null");
    std::printf(", \"stopped_at_s\": %.9f, \"rounds\": %ld, \"transferred_bytes\": %.0f, \"downtime_s\": %.9f, "
                "\"round_bytes\": [%s], \"max_rounds\": %ld, \"bandwidth_bytes_per_s\": %.3f, \"load_cores\": %.6f, "
                "\"stage1_bytes\": %.0f, \"stage1_key\": \"%s\", \"dp_intensity\": %.9f, "
                "\"working_set_memory_bytes\": %.0f, \"migration_speed_bytes_per_s\": %.3f, "
                "\"simgrid_version\": \"%d.%d\"}\n",
                converged ? migration_time : stopped_at, precopy_rounds, transferred, downtime, per_round.c_str(),
                max_rounds, bandwidth, load, ramsize, ramsize_key.c_str(), intensity, ws, speed,
                SIMGRID_VERSION_MAJOR, SIMGRID_VERSION_MINOR);
  } else if (converged)
    std::printf("migration_time_s=%.9f\n", migration_time);
  else
    std::printf("converged=false: still in stage 2 after %ld rounds (%.3f s simulated); raise --max-rounds to "
                "simulate longer\n",
                max_rounds, stopped_at);
  return converged ? 0 : 3;
}
