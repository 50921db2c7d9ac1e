/* Live-migrates one VM in SimGrid with the parameters `dirtytrace simgrid --json` fitted to a
 * trace, and prints the migration time.
 *
 *   dirtytrace simgrid TRACE --migration-speed 1Gbit/s --json > params.json
 *   examples/simgrid/build.sh /tmp/migrate && /tmp/migrate params.json
 *
 * Options: --bandwidth B   link bandwidth in bytes/s (default: migration_speed_bytes_per_s)
 *          --load U        cores the VM keeps busy (default: the JSON's cpu_util)
 *          --json          print a JSON object instead of one line
 * SimGrid's own options (--cfg=..., --log=...) are accepted too.
 *
 * The platform: two hosts of 1 Gflop/s, each with as many cores as the VM, joined by one link
 * of the given bandwidth and zero latency. The network model is CM02 with cross-traffic off:
 * with those settings a transfer gets exactly the link's bandwidth (LV08, the default, applies
 * a bandwidth factor of 0.97, and cross-traffic adds a reverse flow of 5 %), so the migration
 * stream runs at min(link bandwidth, migration speed).
 *
 * The VM runs one actor per core that computes forever, and the VM is bounded to
 * load × host speed: SimGrid dirties memory in proportion to the flops a VM computes
 * (dp_intensity × migration_speed / host_speed bytes per flop). */

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

namespace sg4 = simgrid::s4u;

XBT_LOG_NEW_DEFAULT_CATEGORY(dirtytrace_migrate, "dirtytrace's SimGrid migration example");

static void usage(const char* argv0)
{
  std::fprintf(stderr, "usage: %s PARAMS.json [--bandwidth BYTES_PER_S] [--load CORES] [--json]\n", argv0);
  std::exit(2);
}

int main(int argc, char** argv)
{
  sg4::Engine e(&argc, argv); // consumes SimGrid's own --cfg/--log options
  std::string params_path;
  double bandwidth = -1;
  double load      = -1;
  bool json        = false;
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "--bandwidth") == 0 && i + 1 < argc)
      bandwidth = std::atof(argv[++i]);
    else if (std::strcmp(argv[i], "--load") == 0 && i + 1 < argc)
      load = std::atof(argv[++i]);
    else if (std::strcmp(argv[i], "--json") == 0)
      json = true;
    else if (argv[i][0] != '-' && params_path.empty())
      params_path = argv[i];
    else
      usage(argv[0]);
  }
  if (params_path.empty())
    usage(argv[0]);

  boost::property_tree::ptree p;
  try {
    boost::property_tree::read_json(params_path, p);
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "%s: %s\n", params_path.c_str(), ex.what());
    return 1;
  }
  const double ramsize   = p.get<double>("ramsize_bytes");
  const double intensity = p.get<double>("dp_intensity");
  const double ws        = p.get<double>("working_set_memory_bytes");
  const double speed     = p.get<double>("migration_speed_bytes_per_s");
  if (load < 0)
    load = p.get<double>("cpu_util", 1.0);
  if (bandwidth <= 0)
    bandwidth = speed;
  if (!(ramsize > 0 && speed > 0 && bandwidth > 0 && load >= 0)) {
    std::fprintf(stderr, "%s: need ramsize_bytes > 0, migration_speed_bytes_per_s > 0, bandwidth > 0, load >= 0\n",
                 params_path.c_str());
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

  double migration_time = -1;
  sg4::Actor::create("migrator", src, [vm, dst, &migration_time] {
    const double t0 = sg4::Engine::get_clock();
    sg_vm_migrate(vm, dst);
    migration_time = sg4::Engine::get_clock() - t0;
  });
  e.run();

  if (migration_time < 0) {
    std::fprintf(stderr, "the migration did not finish\n");
    return 1;
  }
  if (json)
    std::printf("{\"migration_time_s\": %.9f, \"bandwidth_bytes_per_s\": %.3f, \"load_cores\": %.6f, "
                "\"ramsize_bytes\": %.0f, \"dp_intensity\": %.9f, \"working_set_memory_bytes\": %.0f, "
                "\"migration_speed_bytes_per_s\": %.3f, \"simgrid_version\": \"%d.%d\"}\n",
                migration_time, bandwidth, load, ramsize, intensity, ws, speed, SIMGRID_VERSION_MAJOR,
                SIMGRID_VERSION_MINOR);
  else
    std::printf("migration_time_s=%.9f\n", migration_time);
  return 0;
}
