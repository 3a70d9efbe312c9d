/* `ffdl policy simulate`: replays a workload trace on a simulated cluster. */
#ifndef FFDL_APP_SIMULATE_CMD_H
#define FFDL_APP_SIMULATE_CMD_H

/* ARGV holds the options after "simulate". Returns the exit status. */
int ffdl_cmd_simulate(int argc, char **argv);

#endif
