%% @doc A local mixed cluster on one machine: BEAM VMs running `macula_routing_server' in network
%% mode and `rust-node run' processes, all on 127.0.0.1, joined as one DHT. For demos, tests and
%% trying the DHT out before deploying it.
%%
%% ```
%% {ok, Cluster, [Beam, Rust]} = macula_dht_local:start(#{beam => 1, rust => 1}),
%% ok = macula_dht_local:advertise(Beam, <<"calc">>, <<"https://calc:9443">>, 60),
%% {ok, [_BeamId]} = macula_dht_local:discover(Rust, <<"calc">>, 1),
%% ok = macula_dht_local:stop(Cluster).
%% '''
%%
%% A cluster is a process (not linked to its caller, so that it outlives a crashed caller until
%% someone calls `stop/1') that owns every node it started: a BEAM node is a peer VM started
%% with OTP's `peer' module (`connection => standard_io', so no distribution is needed), a Rust
%% node is a `rust-node run' port program. `stop/1' ends each by its id: `peer:stop/1' for a VM
%% (SIGKILL to its OS pid if it outlives that), SIGTERM to a Rust node's OS pid (SIGKILL after
%% `stop_timeout_ms'). Every wait is bounded; a node that does not come up in time is an
%% `{error, ...}', and `start/1' then stops everything it had started.
%%
%% A node's handle is a map with `kind' (`beam' or `rust'), `name', `id' (32 bytes), `addr'
%% (`<<"127.0.0.1:Port">>'), `os_pid', `log' (its log file), `cluster' and `call_timeout_ms' (the
%% bound of a call into it: the cluster's option); a BEAM node also has
%% `peer' (the `peer' process, for `peer:call/4,5') and `server' (the registered name of its
%% `macula_routing_server'), a Rust node `ctl' (its control socket, for `rust-node ctl --socket')
%% and `rust_node' (the binary).
%%
%% The cluster's directory holds, per node `Name': `Name.key' (its identity), `Name.log' (its log:
%% a VM's logger output, a Rust node's stderr), and for a Rust node `Name.sock' (its control
%% socket) and `Name.pid' (its OS pid, for a script to clean up after a VM that died without
%% stopping its cluster: peer VMs end with their origin, port programs do not).
-module(macula_dht_local).
-behaviour(gen_server).

-export([start/1, stop/1, new/1, start_beam/3, start_rust/3, stop_node/1, nodes/1, dir/1]).
-export([advertise/4, remove/2, discover/3, stats/1]).
-export([ctl/2, command/4, signal/2, is_alive/1, free_port/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([cluster/0, node_/0, options/0, node_options/0]).

-include_lib("kernel/include/file.hrl").

%% Most nodes of each kind `start/1' starts.
-define(MAX_NODES, 64).
-define(CLUSTER_KEYS, [rust_node, dir, start_timeout_ms, stop_timeout_ms, call_timeout_ms,
                       code_path]).
-define(MESH_KEYS, [beam, rust, k, ports]).
-define(NODE_KEYS, [listen, bootstrap, k, wait_joined, config, args]).
-define(DEFAULTS, #{start_timeout_ms => 20000, stop_timeout_ms => 5000,
                    call_timeout_ms => 20000, code_path => []}).
-define(SERVER, macula_routing_server).
%% rust-node prints this line once it serves (its control socket included).
-define(READY_LINE, "rust-node listening on ").
%% Longest output kept of a short command, and the tail of a log quoted in an error.
-define(MAX_OUTPUT_BYTES, 1048576).
-define(LOG_TAIL_BYTES, 1024).
-define(POLL_MS, 50).
%% A Unix socket path longer than this does not fit `sun_path'.
-define(MAX_SOCKET_PATH, 107).
-define(SIGNALS, ["TERM", "KILL", "INT", "STOP", "CONT", "HUP"]).

%% The cluster process.
-type cluster() :: pid().
-type node_() :: #{kind := beam | rust, name := string(), id := <<_:256>>, addr := binary(),
                   os_pid := pos_integer(), log := file:filename(), cluster := cluster(),
                   call_timeout_ms := pos_integer(), peer => pid(), server => atom(),
                   ctl => file:filename(), rust_node => file:filename()}.
%% Options of `start/1'; `new/1' takes all but `beam', `rust', `k' and `ports'.
-type options() :: #{beam => 0..?MAX_NODES, rust => 0..?MAX_NODES, k => 1..64,
                     ports => os | [inet:port_number()],
                     rust_node => file:filename(), dir => file:filename(),
                     start_timeout_ms => pos_integer(), stop_timeout_ms => pos_integer(),
                     call_timeout_ms => pos_integer(), code_path => [file:filename()]}.
%% Options of one node: its listen address (`"127.0.0.1:0"': a port of the system's choice),
%% whom it joins through, its `k', whether to wait until it knows a peer; for a BEAM node more
%% server config (merged over the rest), for a Rust node more `rust-node run' flags.
-type node_options() :: #{listen => string() | binary(), bootstrap => [string() | binary()],
                          k => 1..64, wait_joined => boolean(), config => map(),
                          args => [string()]}.
%% What a program run to completion printed (stdout and stderr), with its exit status.
-type ran() :: {ExitStatus :: non_neg_integer() | timeout, Output :: binary()}.

-record(state, {dir :: file:filename(),
                own_dir :: boolean(),
                rust_node :: file:filename() | undefined,
                start_timeout :: pos_integer(),
                stop_timeout :: pos_integer(),
                call_timeout :: pos_integer(),
                code_path :: [file:filename()],
                %% started nodes, the newest first
                nodes = [] :: [node_()],
                %% the port of each running Rust node, and its name
                ports = #{} :: #{port() => string()},
                %% OS pids of short commands running in callers' processes
                commands = #{} :: #{pos_integer() => true}}).

%%====================================================================
%% Cluster
%%====================================================================

%% @doc Starts `beam' BEAM nodes (default 1) and `rust' Rust nodes (default 1), named
%% `"beam-1"'..., `"rust-1"'..., in the order beam-1, rust-1, beam-2, rust-2..., each joining
%% through the first and known to have joined before the next starts. `k' is each node's k
%% (default the node's default, 20); `ports' their UDP ports in that order (default `os': each
%% binds port 0, the system's choice, so nothing clashes). For the other options see `new/1'.
-spec start(options()) -> {ok, cluster(), [node_()]} | {error, term()}.
start(Options) when is_map(Options) ->
    Mesh = maps:with(?MESH_KEYS, Options),
    case mesh(maps:merge(#{beam => 1, rust => 1, ports => os}, Mesh)) of
        {ok, Specs} ->
            case new(maps:without(?MESH_KEYS, Options)) of
                {ok, Cluster} -> start_mesh(Cluster, Specs);
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end;
start(Options) ->
    {error, {invalid_options, Options}}.

%% @doc Starts a cluster with no node yet (`start_beam/3', `start_rust/3' add them). Options:
%% `rust_node' (the binary; default `$MACULA_RUST_NODE', else `rust-node' on the `PATH'), `dir'
%% (for keys, logs and sockets, created if missing and kept; default a new temporary directory,
%% removed by `stop/1'), `start_timeout_ms' (20000: how long a node may take to come up, and
%% to join when asked to), `stop_timeout_ms' (5000: how long a node may take to exit),
%% `call_timeout_ms' (20000: one call into a node), `code_path' (more directories for the code
%% path of BEAM nodes, besides this application's).
-spec new(map()) -> {ok, cluster()} | {error, term()}.
new(Options) when is_map(Options) ->
    case validate(maps:merge(?DEFAULTS, Options)) of
        {ok, Valid} -> gen_server:start(?MODULE, Valid, []);
        {error, _} = Error -> Error
    end;
new(Options) ->
    {error, {invalid_options, Options}}.

%% @doc Stops every node of the cluster (the newest first), kills the commands still running,
%% removes the directory if the cluster made it, and ends the cluster. `{error, Failed}' lists
%% the nodes that did not stop cleanly (a Rust node's non-zero exit, one that had already
%% exited, one killed after its grace period); they are gone all the same.
-spec stop(cluster()) -> ok | {error, [{Name :: string(), term()}]}.
stop(Cluster) ->
    Result = gen_server:call(Cluster, stop_all, infinity),
    ok = gen_server:stop(Cluster),
    Result.

%% @doc Starts BEAM node `Name' (letters, digits, `.', `_', `-'): a peer VM with this
%% application on its code path, its log in `Name.log', running `macula_routing_server' in
%% network mode with the identity `Name.key'.
-spec start_beam(cluster(), string(), node_options()) -> {ok, node_()} | {error, term()}.
start_beam(Cluster, Name, Options) ->
    start_node(Cluster, beam, Name, Options).

%% @doc Starts Rust node `Name': `rust-node run --listen L --ctl Name.sock --identity Name.key
%% --log warn' plus the options' flags, its output in `Name.log'; ready once it prints its
%% listening line.
-spec start_rust(cluster(), string(), node_options()) -> {ok, node_()} | {error, term()}.
start_rust(Cluster, Name, Options) ->
    start_node(Cluster, rust, Name, Options).

%% @doc Stops one node as `stop/1' does.
-spec stop_node(node_()) -> ok | {error, term()}.
stop_node(#{cluster := Cluster, name := Name}) ->
    gen_server:call(Cluster, {stop_node, Name}, infinity).

%% @doc The nodes started so far, oldest first.
-spec nodes(cluster()) -> [node_()].
nodes(Cluster) ->
    %% The cluster answers once a start under way is done, which is bounded.
    gen_server:call(Cluster, nodes, infinity).

%% @doc The cluster's directory.
-spec dir(cluster()) -> file:filename().
dir(Cluster) ->
    gen_server:call(Cluster, dir, infinity).

%%====================================================================
%% Nodes
%%====================================================================

%% @doc Publishes the node as a provider of `Service' at `Endpoint' for `Ttl' seconds: BEAM
%% `macula_service_registry:publish_to_dht/5' with the node's id; Rust `ctl advertise', which
%% republishes it until removed.
-spec advertise(node_(), binary(), binary(), pos_integer()) -> ok | {error, term()}.
advertise(#{kind := beam, id := Id} = Node, Service, Endpoint, Ttl)
  when is_binary(Service), is_binary(Endpoint), is_integer(Ttl), Ttl > 0 ->
    Provider = #{node_id => Id, endpoint => Endpoint},
    %% The last argument (k) is not used: the server replicates to its own k closest.
    beam_call(Node, macula_service_registry, publish_to_dht, [?SERVER, Service, Provider, Ttl, 1]);
advertise(#{kind := rust} = Node, Service, Endpoint, Ttl)
  when is_binary(Service), is_binary(Endpoint), is_integer(Ttl), Ttl > 0 ->
    ok_or_error(ctl(Node, ["advertise", Service, Endpoint, "--ttl", integer_to_list(Ttl)]));
advertise(_Node, Service, Endpoint, Ttl) ->
    {error, {invalid_advertisement, Service, Endpoint, Ttl}}.

%% @doc Withdraws the node's provider of `Service' from the whole DHT.
-spec remove(node_(), binary()) -> ok | {error, term()}.
remove(#{kind := beam, id := Id} = Node, Service) when is_binary(Service) ->
    beam_call(Node, macula_service_registry, remove_from_dht, [?SERVER, Service, Id]);
remove(#{kind := rust} = Node, Service) when is_binary(Service) ->
    ok_or_error(ctl(Node, ["remove", Service]));
remove(_Node, Service) ->
    {error, {invalid_service, Service}}.

%% @doc The sorted node ids of the providers of `Service' the node finds wanting `Want' (1..1000)
%% of them (a network lookup unless it holds that many itself): BEAM
%% `macula_service_registry:query_dht_for_service/3', Rust `ctl discover'.
-spec discover(node_(), binary(), 1..1000) -> {ok, [binary()]} | {error, term()}.
discover(#{kind := beam} = Node, Service, Want)
  when is_binary(Service), is_integer(Want), Want > 0, Want =< 1000 ->
    Query = [?SERVER, Service, Want],
    case beam_call(Node, macula_service_registry, query_dht_for_service, Query) of
        {ok, Providers} -> {ok, lists:sort([Id || #{node_id := Id} <- Providers])};
        {error, _} = Error -> Error
    end;
discover(#{kind := rust} = Node, Service, Want)
  when is_binary(Service), is_integer(Want), Want > 0, Want =< 1000 ->
    case ctl(Node, ["discover", Service, "--want", integer_to_list(Want), "--json"]) of
        {0, Json} ->
            Ids = re:run(Json, <<"\"node_id\":\"([0-9a-f]{64})\"">>,
                         [global, {capture, all_but_first, binary}]),
            {ok, lists:sort([binary:decode_hex(Hex) || [Hex] <- matches(Ids)])};
        {1, Output} = Failed ->
            %% Exit 1 also reports failures; only "no provider" means an empty answer.
            case binary:match(Output, <<"no provider of">>) of
                nomatch -> {error, Failed};
                _ -> {ok, []}
            end;
        Failed ->
            {error, Failed}
    end;
discover(_Node, Service, Want) ->
    {error, {invalid_discovery, Service, Want}}.

%% @doc The node's counters under the same names for both kinds (`peers', `joined', `keys',
%% `records', `lookups', ...): BEAM `macula_routing_server:stats/1', Rust the numbers and
%% booleans of `ctl status --json'.
-spec stats(node_()) -> {ok, #{atom() => integer() | boolean()}} | {error, term()}.
stats(#{kind := beam} = Node) ->
    case beam_call(Node, ?SERVER, stats, [?SERVER]) of
        Stats when is_map(Stats) -> {ok, Stats};
        {error, _} = Error -> Error
    end;
stats(#{kind := rust} = Node) ->
    case ctl(Node, ["status", "--json"]) of
        {0, Json} ->
            Fields = re:run(Json, <<"\"([a-z0-9_]+)\":(true|false|[0-9]+)[,}]">>,
                            [global, {capture, all_but_first, binary}]),
            %% Names from our own rust-node's status (a fixed set), not from the network.
            {ok, maps:from_list([{binary_to_atom(Name), json_scalar(Value)}
                                 || [Name, Value] <- matches(Fields)])};
        Failed ->
            {error, Failed}
    end.

%% @doc `rust-node ctl --socket S Args...' on a Rust node, bounded by the cluster's
%% `call_timeout_ms'.
-spec ctl(node_(), [string() | binary()]) -> ran().
ctl(#{kind := rust, ctl := Socket, rust_node := Exe, cluster := Cluster,
      call_timeout_ms := Timeout}, Args) ->
    run(Cluster, Exe, ["ctl", "--socket", Socket | Args], Timeout).

%% @doc Runs `Program Args...' to completion in the caller's process, killed by its OS pid after
%% `TimeoutMs'. The cluster records it while it runs, so that `stop/1' kills it if its caller
%% died meanwhile. At most 1 MiB of its output is kept.
-spec command(cluster(), file:filename(), [string() | binary()], pos_integer()) ->
          ran() | {error, {not_executable, file:filename()}}.
command(Cluster, Program, Args, TimeoutMs) when is_integer(TimeoutMs), TimeoutMs > 0 ->
    case is_executable(Program) of
        true -> run(Cluster, Program, Args, TimeoutMs);
        false -> {error, {not_executable, Program}}
    end.

%% @doc Sends a signal (`"TERM"', `"KILL"', `"INT"', `"STOP"', `"CONT"', `"HUP"') to a node's OS
%% process.
-spec signal(node_(), string()) -> ok | {error, {invalid_signal, term()}}.
signal(#{os_pid := OsPid}, Signal) ->
    case lists:member(Signal, ?SIGNALS) of
        true -> kill(Signal, OsPid);
        false -> {error, {invalid_signal, Signal}}
    end.

%% @doc Whether a node's OS process is still there.
-spec is_alive(node_()) -> boolean().
is_alive(#{os_pid := OsPid}) ->
    os_process_alive(OsPid).

%% @doc A UDP port on 127.0.0.1 that nothing listens on (the system's choice, closed again at
%% once), for a node that must be at an address known before it starts.
-spec free_port() -> inet:port_number().
free_port() ->
    {ok, Socket} = gen_udp:open(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(Socket),
    ok = gen_udp:close(Socket),
    Port.

%%====================================================================
%% Options
%%====================================================================

-spec validate(map()) -> {ok, map()} | {error, term()}.
validate(Options) ->
    case maps:keys(maps:without(?CLUSTER_KEYS, Options)) of
        [] -> check_all(maps:to_list(Options), Options);
        [Unknown | _] -> {error, {unknown_option, Unknown}}
    end.

check_all([], Options) ->
    {ok, Options};
check_all([{Key, Value} | Rest], Options) ->
    case check(Key, Value) of
        true -> check_all(Rest, Options);
        false -> {error, {invalid_option, Key, Value}}
    end.

-spec check(atom(), term()) -> boolean().
check(rust_node, Path) -> is_executable(Path);
check(dir, Dir) -> is_path(Dir);
check(code_path, Dirs) ->
    is_list(Dirs) andalso length(Dirs) =< 64 andalso lists:all(fun is_path/1, Dirs);
check(_Timeout, Ms) -> is_integer(Ms) andalso Ms > 0 andalso Ms =< 3600000.

%% The node specs of `start/1': [{Kind, Name, Options}] in start order.
-spec mesh(map()) -> {ok, [{beam | rust, string(), node_options()}]} | {error, term()}.
mesh(#{beam := Beam, rust := Rust, ports := Ports} = Mesh) ->
    Common = maps:with([k], Mesh),
    case {is_count(Beam), is_count(Rust), node_options("mesh", Common)} of
        {false, _, _} -> {error, {invalid_option, beam, Beam}};
        {_, false, _} -> {error, {invalid_option, rust, Rust}};
        {_, _, {error, _} = Error} -> Error;
        _ when Beam + Rust =:= 0 -> {error, {invalid_option, beam_and_rust, {0, 0}}};
        _ ->
            case listen_addrs(Ports, Beam + Rust) of
                {ok, Listen} ->
                    Kinds = interleave([{beam, I} || I <- lists:seq(1, Beam)],
                                       [{rust, I} || I <- lists:seq(1, Rust)]),
                    {ok, [{Kind, atom_to_list(Kind) ++ "-" ++ integer_to_list(I),
                           Common#{listen => Addr}}
                          || {{Kind, I}, Addr} <- lists:zip(Kinds, Listen)]};
                {error, _} = Error ->
                    Error
            end
    end.

is_count(N) ->
    is_integer(N) andalso N >= 0 andalso N =< ?MAX_NODES.

listen_addrs(os, Count) ->
    {ok, lists:duplicate(Count, "127.0.0.1:0")};
listen_addrs(Ports, Count) when is_list(Ports), length(Ports) =:= Count ->
    Valid = lists:all(fun(P) -> is_integer(P) andalso P > 0 andalso P < 65536 end, Ports)
        andalso length(lists:usort(Ports)) =:= Count,
    case Valid of
        true -> {ok, ["127.0.0.1:" ++ integer_to_list(P) || P <- Ports]};
        false -> {error, {invalid_option, ports, Ports}}
    end;
listen_addrs(Ports, _Count) ->
    {error, {invalid_option, ports, Ports}}.

interleave([A | As], [B | Bs]) -> [A, B | interleave(As, Bs)];
interleave(As, Bs) -> As ++ Bs.

-spec start_mesh(cluster(), [{beam | rust, string(), node_options()}]) ->
          {ok, cluster(), [node_()]} | {error, term()}.
start_mesh(Cluster, [{Kind, Name, Options} | Rest]) ->
    case start_node(Cluster, Kind, Name, Options) of
        {ok, #{addr := Seed} = First} ->
            Join = #{bootstrap => [Seed], wait_joined => true},
            case start_each(Cluster, Rest, Join, [First]) of
                {ok, Nodes} ->
                    {ok, Cluster, Nodes};
                {error, _} = Error ->
                    _ = stop(Cluster),
                    Error
            end;
        {error, Reason} ->
            _ = stop(Cluster),
            {error, {start_failed, Name, Reason}}
    end.

start_each(_Cluster, [], _Join, Started) ->
    {ok, lists:reverse(Started)};
start_each(Cluster, [{Kind, Name, Options} | Rest], Join, Started) ->
    case start_node(Cluster, Kind, Name, maps:merge(Options, Join)) of
        {ok, Node} -> start_each(Cluster, Rest, Join, [Node | Started]);
        {error, Reason} -> {error, {start_failed, Name, Reason}}
    end.

-spec start_node(cluster(), beam | rust, string(), node_options()) ->
          {ok, node_()} | {error, term()}.
start_node(Cluster, Kind, Name, Options) ->
    case node_options(Name, Options) of
        ok -> gen_server:call(Cluster, {start, Kind, Name, Options}, infinity);
        {error, _} = Error -> Error
    end.

node_options(Name, Options) when is_map(Options) ->
    case {is_name(Name), maps:keys(maps:without(?NODE_KEYS, Options))} of
        {false, _} -> {error, {invalid_name, Name}};
        {true, [Unknown | _]} -> {error, {unknown_option, Unknown}};
        {true, []} -> check_node_options(maps:to_list(Options))
    end;
node_options(_Name, Options) ->
    {error, {invalid_options, Options}}.

check_node_options([]) ->
    ok;
check_node_options([{Key, Value} | Rest]) ->
    case check_node_option(Key, Value) of
        true -> check_node_options(Rest);
        false -> {error, {invalid_option, Key, Value}}
    end.

check_node_option(listen, Addr) -> is_addr(Addr);
check_node_option(bootstrap, Addrs) ->
    is_list(Addrs) andalso length(Addrs) =< 16 andalso lists:all(fun is_addr/1, Addrs);
check_node_option(k, K) -> is_integer(K) andalso K >= 1 andalso K =< 64;
check_node_option(wait_joined, Wait) -> is_boolean(Wait);
check_node_option(config, Config) -> is_map(Config);
check_node_option(args, Args) ->
    is_list(Args) andalso length(Args) =< 64 andalso lists:all(fun io_lib:char_list/1, Args).

%% A name is part of file names: no separators, no shell-special characters.
is_name(Name) ->
    io_lib:char_list(Name) andalso Name =/= [] andalso length(Name) =< 64
        andalso lists:all(fun(C) -> lists:member(C, "._-") orelse (C >= $a andalso C =< $z)
                                        orelse (C >= $A andalso C =< $Z)
                                        orelse (C >= $0 andalso C =< $9)
                          end, Name).

%% "host:port", as a string or binary.
is_addr(Addr) when is_binary(Addr) -> is_addr(unicode:characters_to_list(Addr));
is_addr(Addr) ->
    io_lib:char_list(Addr) andalso length(Addr) =< 255
        andalso case string:split(Addr, ":", trailing) of
                    [Host, Port] when Host =/= [] -> is_port_number(Port);
                    _ -> false
                end.

is_port_number(Digits) ->
    case string:to_integer(Digits) of
        {N, []} -> N >= 0 andalso N < 65536;
        _ -> false
    end.

is_path(Path) ->
    (is_binary(Path) orelse io_lib:char_list(Path)) andalso Path =/= [] andalso Path =/= <<>>.

is_executable(Path) ->
    is_path(Path) andalso
        case file:read_file_info(Path) of
            {ok, #file_info{type = regular, mode = Mode}} -> Mode band 8#111 =/= 0;
            _ -> false
        end.

%%====================================================================
%% gen_server: the cluster process
%%====================================================================

%% @private
init(Options) ->
    %% A peer VM's exit (e.g. killed by a test) must not end the cluster.
    process_flag(trap_exit, true),
    case work_dir(maps:get(dir, Options, undefined)) of
        {ok, Dir, Own} ->
            {ok, #state{dir = Dir, own_dir = Own, rust_node = rust_node(Options),
                        start_timeout = maps:get(start_timeout_ms, Options),
                        stop_timeout = maps:get(stop_timeout_ms, Options),
                        call_timeout = maps:get(call_timeout_ms, Options),
                        code_path = maps:get(code_path, Options)}};
        {error, Reason} ->
            {stop, Reason}
    end.

%% @private
handle_call({start, Kind, Name, Options}, _From, #state{nodes = Nodes} = State) ->
    case [N || #{name := N} <- Nodes, N =:= Name] of
        [] -> start_here(Kind, Name, Options, State);
        _ -> {reply, {error, {name_taken, Name}}, State}
    end;
handle_call({stop_node, Name}, _From, #state{nodes = Nodes} = State) ->
    case lists:partition(fun(#{name := N}) -> N =:= Name end, Nodes) of
        {[Node], Rest} ->
            {Reply, Ports} = stop_one(Node, State),
            {reply, Reply, State#state{nodes = Rest, ports = Ports}};
        {[], _} ->
            {reply, {error, {no_such_node, Name}}, State}
    end;
handle_call(stop_all, _From, State) ->
    {Failed, Stopped} = stop_everything(State),
    {reply, case Failed of [] -> ok; _ -> {error, Failed} end, Stopped};
handle_call(nodes, _From, #state{nodes = Nodes} = State) ->
    {reply, lists:reverse(Nodes), State};
handle_call(dir, _From, #state{dir = Dir} = State) ->
    {reply, Dir, State}.

%% @private
handle_cast({command, OsPid, running}, #state{commands = Commands} = State) ->
    {noreply, State#state{commands = Commands#{OsPid => true}}};
handle_cast({command, OsPid, done}, #state{commands = Commands} = State) ->
    {noreply, State#state{commands = maps:remove(OsPid, Commands)}}.

%% @private
%% A Rust node's output after it started, and its exit, go to its log.
handle_info({Port, {data, {Eol, Line}}}, #state{ports = Ports} = State) ->
    _ = [log_line(log_file(State, Name), Eol, Line) || #{Port := Name} <- [Ports]],
    {noreply, State};
handle_info({Port, {exit_status, Status}}, #state{ports = Ports} = State) ->
    case Ports of
        #{Port := Name} ->
            log_exit(log_file(State, Name), Status),
            {noreply, State#state{ports = maps:remove(Port, Ports)}};
        _ ->
            {noreply, State}
    end;
handle_info({'EXIT', _From, _Reason}, State) ->
    {noreply, State}.

%% @private
%% Ended without `stop/1' (a crash, or gen_server:stop): nothing is left running.
terminate(_Reason, State) ->
    _ = stop_everything(State),
    ok.

%%====================================================================
%% Starting
%%====================================================================

start_here(Kind, Name, Options, #state{start_timeout = Timeout} = State) ->
    Deadline = now_ms() + Timeout,
    Started = case Kind of
                  beam -> start_vm(Name, Options, Deadline, State);
                  rust -> start_port(Name, Options, Deadline, State)
              end,
    case Started of
        {ok, Node, Ports} ->
            case await_joined(Node, Options, Deadline) of
                ok ->
                    {reply, {ok, Node}, State#state{nodes = [Node | State#state.nodes],
                                                    ports = Ports}};
                {error, _} = Error ->
                    {_, Left} = stop_one(Node, State#state{ports = Ports}),
                    {reply, Error, State#state{ports = Left}}
            end;
        {error, _} = Error ->
            {reply, Error, State}
    end.

start_vm(Name, Options, Deadline, #state{dir = Dir, code_path = CodePath} = State) ->
    Ebin = filename:dirname(code:which(?SERVER)),
    PeerOptions = #{connection => standard_io, wait_boot => max(1, Deadline - now_ms()),
                    %% The VM of this very OTP, so that its NIF and beams fit.
                    exec => filename:join([code:root_dir(), "bin", "erl"]),
                    args => lists:append([["-pa", to_list(D)] || D <- [Ebin | CodePath]])},
    case catch peer:start_link(PeerOptions) of
        {ok, Peer, _NodeName} ->
            Log = log_file(State, Name),
            Node0 = #{kind => beam, name => Name, peer => Peer, server => ?SERVER, log => Log,
                      cluster => self(), call_timeout_ms => State#state.call_timeout},
            case catch boot_vm(Node0, server_config(Name, Options, Dir), Deadline) of
                {ok, Node} ->
                    {ok, Node, State#state.ports};
                Failed ->
                    catch peer:stop(Peer),
                    {error, {beam_start, reason(Failed)}}
            end;
        Failed ->
            {error, {peer_start, reason(Failed)}}
    end.

%% Inside the new VM: its log to a file, then the server; its id and bound address.
boot_vm(#{peer := Peer, log := Log} = Node, Config, Deadline) ->
    Call = fun(M, F, A) -> peer:call(Peer, M, F, A, max(1, Deadline - now_ms())) end,
    OsPid = list_to_integer(Call(os, getpid, [])),
    ok = Call(logger, remove_handler, [default]),
    ok = Call(logger, add_handler, [default, logger_std_h, #{config => #{file => Log}}]),
    %% The server links to the short-lived process that runs this call; that process exits
    %% normally, which leaves the server running.
    case Call(?SERVER, start_link, [auto, Config]) of
        {ok, _Server} ->
            {ok, {Ip, Port}} = Call(?SERVER, address, [?SERVER]),
            {ok, Node#{os_pid => OsPid, id => Call(?SERVER, node_id, [?SERVER]),
                       addr => iolist_to_binary([inet:ntoa(Ip), ":", integer_to_list(Port)])}};
        {error, Reason} ->
            {error, {server, Reason}}
    end.

server_config(Name, Options, Dir) ->
    Base = #{listen => maps:get(listen, Options, "127.0.0.1:0"),
             identity => filename:join(Dir, Name ++ ".key"),
             bootstrap => maps:get(bootstrap, Options, [])},
    maps:merge(maps:merge(Base, maps:with([k], Options)), maps:get(config, Options, #{})).

start_port(_Name, _Options, _Deadline, #state{rust_node = undefined}) ->
    {error, {rust_node_not_found, "set MACULA_RUST_NODE, the rust_node option or PATH"}};
start_port(Name, Options, Deadline, #state{dir = Dir, rust_node = Exe, ports = Ports} = State) ->
    Socket = filename:join(Dir, Name ++ ".sock"),
    Log = log_file(State, Name),
    Args = ["run", "--listen", to_list(maps:get(listen, Options, "127.0.0.1:0")),
            "--ctl", Socket, "--identity", filename:join(Dir, Name ++ ".key"), "--log", "warn"]
        ++ lists:append([["--bootstrap", to_list(A)] || A <- maps:get(bootstrap, Options, [])])
        ++ case Options of #{k := K} -> ["--k", integer_to_list(K)]; _ -> [] end
        ++ maps:get(args, Options, []),
    case length(Socket) > ?MAX_SOCKET_PATH of
        true ->
            {error, {socket_path_too_long, Socket}};
        false ->
            Port = open_port({spawn_executable, Exe},
                             [{args, Args}, {line, 4096}, binary, exit_status, stderr_to_stdout]),
            {os_pid, OsPid} = erlang:port_info(Port, os_pid),
            ok = file:write_file(filename:join(Dir, Name ++ ".pid"), [integer_to_list(OsPid), $\n]),
            Node = #{kind => rust, name => Name, os_pid => OsPid, ctl => Socket, rust_node => Exe,
                     log => Log, cluster => self(), call_timeout_ms => State#state.call_timeout},
            case await_ready(Port, Log, Deadline) of
                {ok, Addr, Id} ->
                    {ok, Node#{addr => Addr, id => Id}, Ports#{Port => Name}};
                {error, {exited, _, _}} = Exited ->
                    Exited;
                {error, _} = Error ->
                    _ = stop_port(Port, OsPid, Log, State#state.stop_timeout),
                    Error
            end
    end.

%% Waits for the listening line ("rust-node listening on ADDR id HEX"); what comes before it goes
%% to the log.
await_ready(Port, Log, Deadline) ->
    receive
        {Port, {data, {eol, <<?READY_LINE, Rest/binary>>}}} ->
            case binary:split(Rest, <<" id ">>) of
                [Addr, <<Hex:64/binary>>] -> {ok, Addr, binary:decode_hex(Hex)};
                _ -> {error, {unexpected_output, Rest}}
            end;
        {Port, {data, {Eol, Line}}} ->
            log_line(Log, Eol, Line),
            await_ready(Port, Log, Deadline);
        {Port, {exit_status, Status}} ->
            {error, {exited, Status, log_tail(Log)}}
    after max(0, Deadline - now_ms()) ->
        {error, {not_ready, log_tail(Log)}}
    end.

%% Asked to wait (a node of a mesh), a node that joins through others is up once it knows a peer.
await_joined(Node, #{wait_joined := true, bootstrap := [_ | _]}, Deadline) ->
    poll_joined(Node, Deadline);
await_joined(_Node, _Options, _Deadline) ->
    ok.

poll_joined(Node, Deadline) ->
    case stats(Node) of
        {ok, #{joined := true}} ->
            ok;
        Other ->
            case now_ms() >= Deadline of
                true -> {error, {not_joined, Other}};
                false -> timer:sleep(?POLL_MS), poll_joined(Node, Deadline)
            end
    end.

%%====================================================================
%% Stopping
%%====================================================================

stop_everything(#state{nodes = Nodes, commands = Commands, dir = Dir, own_dir = Own} = State) ->
    {Failed, _} = lists:foldl(fun(Node, {Failed, S}) ->
                                      case stop_one(Node, S) of
                                          {ok, Ports} -> {Failed, S#state{ports = Ports}};
                                          {{error, Why}, Ports} ->
                                              {[{maps:get(name, Node), Why} | Failed],
                                               S#state{ports = Ports}}
                                      end
                              end, {[], State}, Nodes),
    _ = [kill("KILL", OsPid) || OsPid <- maps:keys(Commands)],
    _ = case Own of
            true -> file:del_dir_r(Dir);
            false -> ok
        end,
    {lists:reverse(Failed), State#state{nodes = [], ports = #{}, commands = #{}}}.

%% Stops one node; the ports of the Rust nodes still running.
stop_one(#{kind := beam, peer := Peer, os_pid := OsPid}, #state{ports = Ports,
                                                               stop_timeout = Timeout}) ->
    catch peer:stop(Peer),
    case await_gone(OsPid, now_ms() + Timeout) of
        true -> {ok, Ports};
        false -> kill("KILL", OsPid), {{error, {killed, no_exit_within_ms, Timeout}}, Ports}
    end;
stop_one(#{kind := rust, name := Name, os_pid := OsPid, log := Log},
         #state{ports = Ports, stop_timeout = Timeout}) ->
    case [P || {P, N} <- maps:to_list(Ports), N =:= Name] of
        [Port] -> {stop_port(Port, OsPid, Log, Timeout), maps:remove(Port, Ports)};
        [] -> {{error, exited_before_stop}, Ports}
    end.

%% SIGCONT (a stopped process leaves SIGTERM pending until resumed), SIGTERM, then the exit
%% status; SIGKILL if it has not exited in time.
stop_port(Port, OsPid, Log, Timeout) ->
    ok = kill("CONT", OsPid),
    ok = kill("TERM", OsPid),
    case await_exit(Port, Log, now_ms() + Timeout) of
        {exit_status, 0} ->
            ok;
        {exit_status, Status} ->
            {error, {exit_status, Status}};
        timeout ->
            ok = kill("KILL", OsPid),
            _ = await_exit(Port, Log, now_ms() + Timeout),
            catch port_close(Port),
            {error, {killed, no_exit_within_ms, Timeout}}
    end.

await_exit(Port, Log, Deadline) ->
    receive
        {Port, {data, {Eol, Line}}} ->
            log_line(Log, Eol, Line),
            await_exit(Port, Log, Deadline);
        {Port, {exit_status, Status}} ->
            log_exit(Log, Status),
            {exit_status, Status}
    after max(0, Deadline - now_ms()) ->
        timeout
    end.

await_gone(OsPid, Deadline) ->
    case os_process_alive(OsPid) of
        false -> true;
        true ->
            case now_ms() >= Deadline of
                true -> false;
                false -> timer:sleep(?POLL_MS), await_gone(OsPid, Deadline)
            end
    end.

%%====================================================================
%% Files
%%====================================================================

work_dir(undefined) ->
    Base = case os:getenv("TMPDIR") of
               Tmp when is_list(Tmp), Tmp =/= "" -> Tmp;
               _ -> "/tmp"
           end,
    Dir = filename:join(Base, "macula_dht_local." ++ os:getpid() ++ "."
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    case file:make_dir(Dir) of
        ok -> {ok, Dir, true};
        {error, Reason} -> {error, {dir, Dir, Reason}}
    end;
work_dir(Given) ->
    Dir = filename:absname(to_list(Given)),
    case filelib:ensure_dir(filename:join(Dir, "x")) of
        ok -> {ok, Dir, false};
        {error, Reason} -> {error, {dir, Dir, Reason}}
    end.

rust_node(#{rust_node := Path}) ->
    filename:absname(to_list(Path));
rust_node(_Options) ->
    case os:getenv("MACULA_RUST_NODE") of
        Path when is_list(Path), Path =/= "" -> filename:absname(Path);
        _ ->
            case os:find_executable("rust-node") of
                false -> undefined;
                Path -> Path
            end
    end.

log_file(#state{dir = Dir}, Name) ->
    filename:join(Dir, Name ++ ".log").

log_line(Log, Eol, Line) ->
    _ = file:write_file(Log, [Line | case Eol of eol -> "\n"; noeol -> "" end], [append]),
    ok.

log_exit(Log, Status) ->
    log_line(Log, eol, io_lib:format("(macula_dht_local: rust-node exited with status ~b)",
                                     [Status])).

%% The end of a log, for an error.
log_tail(Log) ->
    case file:open(Log, [read, binary]) of
        {ok, File} ->
            Size = filelib:file_size(Log),
            Start = max(0, Size - ?LOG_TAIL_BYTES),
            Tail = case file:pread(File, Start, ?LOG_TAIL_BYTES) of
                       {ok, Bytes} -> string:trim(Bytes);
                       _ -> <<>>
                   end,
            ok = file:close(File),
            Tail;
        {error, _} ->
            <<>>
    end.

%%====================================================================
%% Processes
%%====================================================================

beam_call(#{peer := Peer, call_timeout_ms := Timeout}, M, F, A) ->
    try
        peer:call(Peer, M, F, A, Timeout)
    catch
        Class:Reason -> {error, {peer_call, Class, Reason}}
    end.

run(Cluster, Program, Args, Timeout) ->
    Port = open_port({spawn_executable, Program},
                     [{args, Args}, exit_status, binary, use_stdio, stderr_to_stdout]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    gen_server:cast(Cluster, {command, OsPid, running}),
    Result = collect(Port, OsPid, now_ms() + Timeout, [], 0),
    gen_server:cast(Cluster, {command, OsPid, done}),
    Result.

collect(Port, OsPid, Deadline, Acc, Size) ->
    receive
        {Port, {data, Data}} when Size + byte_size(Data) =< ?MAX_OUTPUT_BYTES ->
            collect(Port, OsPid, Deadline, [Data | Acc], Size + byte_size(Data));
        {Port, {data, _Beyond}} ->
            collect(Port, OsPid, Deadline, Acc, Size);
        {Port, {exit_status, Status}} ->
            {Status, iolist_to_binary(lists:reverse(Acc))}
    after max(0, Deadline - now_ms()) ->
        ok = kill("KILL", OsPid),
        receive {Port, {exit_status, _}} -> ok after 1000 -> catch port_close(Port) end,
        flush(Port),
        {timeout, iolist_to_binary(lists:reverse(Acc))}
    end.

flush(Port) ->
    receive {Port, _} -> flush(Port) after 0 -> ok end.

kill(Signal, OsPid) when is_integer(OsPid) ->
    _ = os:cmd("kill -" ++ Signal ++ " " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    ok.

os_process_alive(OsPid) ->
    os:cmd("kill -0 " ++ integer_to_list(OsPid) ++ " 2>/dev/null && echo yes") =:= "yes\n".

%%====================================================================
%% Helpers
%%====================================================================

ok_or_error({0, _Output}) -> ok;
ok_or_error(Failed) -> {error, Failed}.

json_scalar(<<"true">>) -> true;
json_scalar(<<"false">>) -> false;
json_scalar(Digits) -> binary_to_integer(Digits).

matches({match, Groups}) -> Groups;
matches(nomatch) -> [].

reason({'EXIT', Reason}) -> Reason;
reason({error, Reason}) -> Reason;
reason(Other) -> Other.

to_list(B) when is_binary(B) -> unicode:characters_to_list(B);
to_list(L) -> L.

now_ms() ->
    erlang:monotonic_time(millisecond).
