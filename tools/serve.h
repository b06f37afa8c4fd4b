// `berth serve`: the control tree over 9P, until SIGINT or SIGTERM.
#pragma once

int serve_main(int argc, char** argv);
int ctl_main(int argc, char** argv);
std::string default_socket_path();
