%% @doc The OS processes of the multi-node suites (`macula_cluster_SUITE', `macula_net_SUITE',
%% `macula_failover_SUITE'): BEAM peer VMs running `macula_routing_server' in network mode, and
%% `rust-node' processes, started and stopped by `macula_dht_local'.
%%
%% One `macula_dht_local' cluster per test case, registered under this module's name and not
%% linked to the case, so that `stop_all/1' (from `end_per_testcase') ends each node by its id
%% even when the case crashed, and `stop_leftover/0' does the same for a case whose
%% `init_per_testcase' failed. `rust-node ctl' and `hostile_peer' commands run in the caller's
%% process, bounded, recorded with the cluster while they run. The case's temporary directory
%% (identity keys, ctl sockets, node logs) is the cluster's; `stop_all/1' copies the logs to the
%% case's log and removes it.
%%
%% A node is a `macula_dht_local' handle: `#{kind := beam | rust, name, os_pid,
%% addr := <<"127.0.0.1:Port">>, id := <<_:256>>, ...}'.
-module(macula_cluster_harness).

-export([check_binary/1, start/0, stop_all/1, stop_leftover/0, dir/1, rust_node_binary/0,
         hostile_peer_binary/0, start_beam/3, start_rust/3, stop_rust/1,
         beam_call/4, ctl/2, hostile_peer/3, signal/2, is_os_process_alive/1,
         wait_until/3, wait_each/4, ids/1]).
-export([start_rust/4, free_port/0, stats/1, advertise/3, discover/3]).

%% How long a peer VM or a rust-node may take to be ready, and a call or command to finish.
-define(START_TIMEOUT_MS, 20000).
-define(CALL_TIMEOUT_MS, 20000).
%% How long a node gets to exit when stopped before SIGKILL.
-define(STOP_TIMEOUT_MS, 5000).
-define(POLL_INTERVAL_MS, 100).

%%--------------------------------------------------------------------------------------------
%% The case's cluster
%%--------------------------------------------------------------------------------------------

%% @doc The suites' `init_per_suite': fails the suite at once when rust-node is not built.
-spec check_binary(list()) -> list() | {fail, term()}.
check_binary(Config) ->
    Binary = rust_node_binary(),
    case filelib:is_regular(Binary) of
        true -> Config;
        false -> {fail, {rust_node_not_built, Binary}}
    end.

%% @doc Starts the cluster of a test case, with no node yet, in a new temporary directory,
%% registered under this module's name. A cluster left by a case whose `end_per_testcase' did not
%% run (its `init_per_testcase' failed) is stopped first.
-spec start() -> pid().
start() ->
    stop_leftover(),
    Dir = string:trim(os:cmd("mktemp -d -t macula_ct.XXXXXXXX")),
    true = filelib:is_dir(Dir),
    case macula_dht_local:new(#{dir => Dir, rust_node => rust_node_binary(),
                                start_timeout_ms => ?START_TIMEOUT_MS,
                                stop_timeout_ms => ?STOP_TIMEOUT_MS,
                                call_timeout_ms => ?CALL_TIMEOUT_MS}) of
        {ok, Cluster} ->
            true = register(?MODULE, Cluster),
            Cluster;
        {error, Reason} ->
            ok = file:del_dir_r(Dir),
            ct:fail({cluster_not_started, Reason})
    end.

%% @doc Stops the registered cluster, if any (for `start/0' and `end_per_suite').
-spec stop_leftover() -> ok.
stop_leftover() ->
    case whereis(?MODULE) of
        undefined -> ok;
        Pid -> stop_all(Pid)
    end.

%% @doc Stops every node and command of the cluster, copies the nodes' logs to the case's log and
%% removes the temporary directory.
-spec stop_all(pid()) -> ok.
stop_all(Harness) ->
    Dir = dir(Harness),
    Stopped = macula_dht_local:stop(Harness),
    ct:log("stopped: ~p", [Stopped]),
    _ = [ct:log("~ts:~n~ts", [filename:basename(Log), Text])
         || Log <- filelib:wildcard(filename:join(Dir, "*.log")),
            {ok, Text} <- [file:read_file(Log)], Text =/= <<>>],
    ok = file:del_dir_r(Dir).

%% @doc The test case's temporary directory.
-spec dir(pid()) -> string().
dir(Harness) ->
    macula_dht_local:dir(Harness).

%% @doc The `rust-node' binary: `$MACULA_RUST_NODE', by default `../target/release/rust-node'
%% relative to the Erlang application's directory (the one holding `rebar.config').
-spec rust_node_binary() -> string().
rust_node_binary() ->
    case os:getenv("MACULA_RUST_NODE") of
        Path when is_list(Path), Path =/= "" -> filename:absname(Path);
        _ -> filename:join([app_dir(), "..", "target", "release", "rust-node"])
    end.

%% @doc The `hostile_peer' example of rust-node (a peer that attacks others' records):
%% `$MACULA_HOSTILE_PEER', by default `../target/release/examples/hostile_peer' relative to the
%% Erlang application's directory.
-spec hostile_peer_binary() -> string().
hostile_peer_binary() ->
    case os:getenv("MACULA_HOSTILE_PEER") of
        Path when is_list(Path), Path =/= "" -> filename:absname(Path);
        _ -> filename:join([app_dir(), "..", "target", "release", "examples", "hostile_peer"])
    end.

%% rebar3 builds the application into `<app dir>/_build/<profile>/lib/macula_dht'.
app_dir() ->
    Lib = code:lib_dir(macula_dht),
    filename:dirname(filename:dirname(filename:dirname(filename:dirname(Lib)))).

%%--------------------------------------------------------------------------------------------
%% Nodes
%%--------------------------------------------------------------------------------------------

%% @doc Starts a peer VM running `macula_routing_server' in network mode on 127.0.0.1 (port 0)
%% with an identity key in the case's directory. `Config' is merged into the server's config
%% (`bootstrap', `k', timeouts, `listen').
-spec start_beam(pid(), string(), map()) -> macula_dht_local:node_().
start_beam(Harness, Name, Config) ->
    started(Name, macula_dht_local:start_beam(Harness, Name, #{config => Config})).

%% @doc Starts `rust-node run --listen 127.0.0.1:0' with a control socket and an identity key in
%% the case's directory, plus `Args' (e.g. `["--bootstrap", Addr, "--k", "3"]'), and waits until
%% it serves (it does once the bootstrap is done).
-spec start_rust(pid(), string(), [string()]) -> macula_dht_local:node_().
start_rust(Harness, Name, Args) ->
    start_rust(Harness, Name, "127.0.0.1:0", Args).

%% @doc `start_rust/3' listening on `Listen' (e.g. `"127.0.0.1:4000"') instead of a port of the
%% system's choice.
-spec start_rust(pid(), string(), string(), [string()]) -> macula_dht_local:node_().
start_rust(Harness, Name, Listen, Args) ->
    started(Name, macula_dht_local:start_rust(Harness, Name, #{listen => Listen, args => Args})).

started(_Name, {ok, Node}) -> Node;
started(Name, {error, Reason}) -> ct:fail({node_not_started, Name, Reason}).

%% @doc Stops a Rust node: resumes it if it was stopped, sends SIGTERM and waits for its exit
%% (SIGKILL after a grace period).
-spec stop_rust(macula_dht_local:node_()) -> ok.
stop_rust(#{kind := rust} = Node) ->
    ct:log("~ts stopped: ~p", [maps:get(name, Node), macula_dht_local:stop_node(Node)]).

%% @doc Sends a signal ("STOP", "CONT", "KILL") to a node's OS process.
-spec signal(macula_dht_local:node_(), string()) -> ok.
signal(Node, Signal) ->
    ok = macula_dht_local:signal(Node, Signal).

-spec is_os_process_alive(macula_dht_local:node_()) -> boolean().
is_os_process_alive(Node) ->
    macula_dht_local:is_alive(Node).

%% @doc `M:F(A...)' on a BEAM node's VM.
-spec beam_call(macula_dht_local:node_(), module(), atom(), [term()]) -> term().
beam_call(#{kind := beam, peer := Peer}, M, F, A) ->
    peer:call(Peer, M, F, A, ?CALL_TIMEOUT_MS).

%% @doc The ids of some nodes.
-spec ids([macula_dht_local:node_()]) -> [binary()].
ids(Nodes) ->
    [Id || #{id := Id} <- Nodes].

%% @doc A UDP port on 127.0.0.1 that nothing listens on, for a node that must start where
%% nobody answers yet, or at a known address.
-spec free_port() -> inet:port_number().
free_port() ->
    macula_dht_local:free_port().

%% @doc A node's counters under the same names for both kinds (`macula_dht_local:stats/1').
-spec stats(macula_dht_local:node_()) -> #{atom() => integer() | boolean()}.
stats(Node) ->
    {ok, Stats} = macula_dht_local:stats(Node),
    Stats.

%% @doc Advertises `Service' from a node at the endpoint `https://<name>.test:443' for `Ttl'
%% seconds (BEAM: `publish_to_dht' with the node's own id; Rust: `ctl advertise').
-spec advertise(macula_dht_local:node_(), binary(), pos_integer()) -> ok | {error, term()}.
advertise(#{name := Name} = Node, Service, Ttl) ->
    macula_dht_local:advertise(Node, Service, list_to_binary("https://" ++ Name ++ ".test:443"),
                               Ttl).

%% @doc The sorted node ids of the providers of `Service' a node finds wanting `Want' of them
%% (a network lookup unless it holds that many itself).
-spec discover(macula_dht_local:node_(), binary(), pos_integer()) ->
          {ok, [binary()]} | {error, term()}.
discover(Node, Service, Want) ->
    macula_dht_local:discover(Node, Service, Want).

%%--------------------------------------------------------------------------------------------
%% rust-node commands
%%--------------------------------------------------------------------------------------------

%% @doc `rust-node ctl --socket S Args...' on a Rust node: `{ExitStatus | timeout, Output}'
%% (stdout and stderr).
-spec ctl(macula_dht_local:node_(), [string()]) -> {integer() | timeout, binary()}.
ctl(Node, Args) ->
    macula_dht_local:ctl(Node, Args).

%% @doc `hostile_peer Args...' to completion within `Timeout' ms: `{ExitStatus | timeout, Output}'.
-spec hostile_peer(pid(), [string()], pos_integer()) -> {integer() | timeout, binary()}.
hostile_peer(Harness, Args, Timeout) ->
    case macula_dht_local:command(Harness, hostile_peer_binary(), Args, Timeout) of
        {error, Reason} -> ct:fail({hostile_peer, Reason});
        Ran -> Ran
    end.

%%--------------------------------------------------------------------------------------------
%% Bounded waits
%%--------------------------------------------------------------------------------------------

%% @doc Polls `Check' until it returns `{ok, Value}' (then returns `Value') or `Timeout' ms have
%% passed (then fails the case with `What' and the last `{wait, Observed}').
-spec wait_until(term(), fun(() -> {ok, T} | {wait, term()}), pos_integer()) -> T.
wait_until(What, Check, Timeout) ->
    poll(What, Check, erlang:monotonic_time(millisecond) + Timeout).

poll(What, Check, Deadline) ->
    case Check() of
        {ok, Value} ->
            Value;
        {wait, Observed} ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true ->
                    ct:fail({timeout, What, Observed});
                false ->
                    timer:sleep(?POLL_INTERVAL_MS),
                    poll(What, Check, Deadline)
            end
    end.

%% @doc `wait_until/3' of `Check(Item)' for every item at once, each in a process of its own;
%% fails the case listing every item whose wait timed out. Returns `[{Item, Value}]'.
-spec wait_each(term(), fun((T) -> {ok, V} | {wait, term()}), [T], integer()) -> [{T, V}].
wait_each(What, Check, Items, Timeout) ->
    Parent = self(),
    Waiters = [spawn_monitor(fun() ->
                                     Deadline = erlang:monotonic_time(millisecond) + Timeout,
                                     Parent ! {self(), each(Check, Item, Deadline)}
                             end)
               || Item <- Items],
    Results = [receive
                   {Pid, Result} ->
                       erlang:demonitor(Ref, [flush]),
                       {Item, Result};
                   {'DOWN', Ref, process, Pid, Reason} ->
                       {Item, {crashed, Reason}}
               end
               || {Item, {Pid, Ref}} <- lists:zip(Items, Waiters)],
    case [{label(Item), Last} || {Item, Last} <- Results, not is_ok(Last)] of
        [] -> [{Item, Value} || {Item, {ok, Value}} <- Results];
        Failed -> ct:fail({timeout, What, Failed})
    end.

each(Check, Item, Deadline) ->
    case Check(Item) of
        {ok, _} = Ok ->
            Ok;
        {wait, Observed} ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true ->
                    {timed_out, Observed};
                false ->
                    timer:sleep(?POLL_INTERVAL_MS),
                    each(Check, Item, Deadline)
            end
    end.

label(#{name := Name}) -> Name;
label(Item) -> Item.

is_ok({ok, _}) -> true;
is_ok(_) -> false.
