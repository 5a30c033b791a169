%% @doc The OS processes of the multi-node suites (`macula_cluster_SUITE', `macula_net_SUITE',
%% `macula_failover_SUITE'): BEAM peer VMs running `macula_routing_server' in network mode, and
%% `rust-node' processes.
%%
%% One owner process per test case starts every peer VM and `rust-node run' process and records
%% it, so that `stop_all/1' (from `end_per_testcase') ends each one by its id even when the case
%% crashed; `stop_leftover/0' does the same for a case whose `init_per_testcase' failed.
%% `rust-node ctl' and `hostile_peer' commands run in the caller's process, bounded, and are
%% recorded with the owner while they run. The owner also holds the case's temporary directory (identity
%% keys, ctl sockets), removed by `stop_all/1'.
%%
%% A node is a map: `#{kind := beam | rust, name, os_pid, addr := <<"127.0.0.1:Port">>,
%% id := <<_:256>>}', plus `peer' (a BEAM node's `peer' process) or `socket' (a Rust node's ctl
%% socket), and the owner under `harness'.
-module(macula_cluster_harness).
-behaviour(gen_server).

-export([check_binary/1, start/0, stop_all/1, stop_leftover/0, dir/1, rust_node_binary/0,
         hostile_peer_binary/0, start_beam/3, start_rust/3, stop_rust/1,
         beam_call/4, ctl/2, hostile_peer/3, signal/2, is_os_process_alive/1,
         wait_until/3, wait_each/4, ids/1]).
-export([start_rust/4, free_port/0, stats/1, advertise/3, discover/3]).

-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

%% How long a peer VM or a rust-node may take to be ready, and a short command to finish.
-define(START_TIMEOUT_MS, 20000).
-define(COMMAND_TIMEOUT_MS, 20000).
%% How long `rust-node run' gets to exit on SIGTERM before SIGKILL.
-define(TERM_GRACE_MS, 5000).
-define(POLL_INTERVAL_MS, 100).
-define(PEER_CALL_TIMEOUT_MS, 20000).

-record(owner, {dir :: string(),
                %% peer process => OS pid of its VM
                peers = #{} :: #{pid() => integer()},
                %% port of a `rust-node run' => {Name, OS pid}
                rust = #{} :: #{port() => {string(), integer()}},
                %% OS pids of short commands still running
                commands = #{} :: #{integer() => true}}).

%%--------------------------------------------------------------------------------------------
%% Owner
%%--------------------------------------------------------------------------------------------

%% @doc The suites' `init_per_suite': fails the suite at once when rust-node is not built.
-spec check_binary(list()) -> list() | {fail, term()}.
check_binary(Config) ->
    Binary = rust_node_binary(),
    case filelib:is_regular(Binary) of
        true -> Config;
        false -> {fail, {rust_node_not_built, Binary}}
    end.

%% @doc Starts the owner of a test case's processes (not linked: it must outlive a crashed case),
%% registered under this module's name. An owner left by a case whose `end_per_testcase' did not
%% run (its `init_per_testcase' failed) is stopped first.
-spec start() -> pid().
start() ->
    stop_leftover(),
    {ok, Pid} = gen_server:start({local, ?MODULE}, ?MODULE, [], []),
    Pid.

%% @doc Stops the registered owner, if any (for `start/0' and `end_per_suite').
-spec stop_leftover() -> ok.
stop_leftover() ->
    case whereis(?MODULE) of
        undefined -> ok;
        Pid -> stop_all(Pid)
    end.

%% @doc Stops every peer VM and kills every OS process the owner recorded, removes the temporary
%% directory, and stops the owner.
-spec stop_all(pid()) -> ok.
stop_all(Harness) ->
    ok = gen_server:call(Harness, stop_all, infinity),
    gen_server:stop(Harness).

%% @doc The test case's temporary directory.
-spec dir(pid()) -> string().
dir(Harness) ->
    gen_server:call(Harness, dir).

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

%% @doc Starts a peer VM (`erl' without a shell, reached over its standard I/O) running
%% `macula_routing_server' in network mode on 127.0.0.1 with an identity key in the case's
%% directory. `Config' is merged into the server's config (`bootstrap', `k', timeouts).
-spec start_beam(pid(), string(), map()) -> map().
start_beam(Harness, Name, Config) ->
    {ok, Peer, OsPid} = gen_server:call(Harness, start_peer, ?START_TIMEOUT_MS),
    Identity = filename:join(dir(Harness), Name ++ ".key"),
    ServerConfig = maps:merge(#{listen => "127.0.0.1:0", identity => Identity}, Config),
    %% The server links to the short-lived process that runs this call; that process exits
    %% normally, which leaves the server running.
    {ok, _} = peer_call(Peer, macula_routing_server, start_link, [auto, ServerConfig]),
    {ok, {Ip, Port}} = peer_call(Peer, macula_routing_server, address, [macula_routing_server]),
    #{kind => beam, name => Name, peer => Peer, os_pid => OsPid, harness => Harness,
      addr => iolist_to_binary([inet:ntoa(Ip), ":", integer_to_list(Port)]),
      id => peer_call(Peer, macula_routing_server, node_id, [macula_routing_server])}.

%% @doc Starts `rust-node run --listen 127.0.0.1:0' with a control socket and an identity key in
%% the case's directory, plus `Args' (e.g. `["--bootstrap", Addr, "--k", "3"]'), and waits until
%% its control socket answers (it binds it once the bootstrap is done).
-spec start_rust(pid(), string(), [string()]) -> map().
start_rust(Harness, Name, Args) ->
    start_rust(Harness, Name, "127.0.0.1:0", Args).

%% @doc `start_rust/3' listening on `Listen' (e.g. `"127.0.0.1:4000"') instead of a port of the
%% system's choice.
-spec start_rust(pid(), string(), string(), [string()]) -> map().
start_rust(Harness, Name, Listen, Args) ->
    Dir = dir(Harness),
    Socket = filename:join(Dir, Name ++ ".sock"),
    RunArgs = ["run", "--listen", Listen, "--ctl", Socket, "--log", "warn",
               "--identity", filename:join(Dir, Name ++ ".key") | Args],
    {ok, OsPid} = gen_server:call(Harness, {start_rust, Name, RunArgs}),
    Node = #{kind => rust, name => Name, os_pid => OsPid, socket => Socket, harness => Harness},
    Status = wait_until({rust_node_ready, Name},
                        fun() ->
                                case ctl(Node, ["status", "--json"]) of
                                    {0, Json} -> {ok, Json};
                                    Other -> {wait, Other}
                                end
                        end, ?START_TIMEOUT_MS),
    Node#{addr => json_string(<<"addr">>, Status),
          id => binary:decode_hex(json_string(<<"id">>, Status))}.

%% @doc Stops a Rust node: resumes it if it was stopped, sends SIGTERM and waits for its exit
%% (SIGKILL after a grace period).
-spec stop_rust(map()) -> ok.
stop_rust(#{kind := rust, harness := Harness, os_pid := OsPid}) ->
    gen_server:call(Harness, {stop_rust, OsPid}, ?TERM_GRACE_MS * 2).

%% @doc Sends a signal ("STOP", "CONT", "KILL") to a node's OS process.
-spec signal(map(), string()) -> ok.
signal(#{os_pid := OsPid}, Signal) ->
    kill(Signal, OsPid).

-spec is_os_process_alive(map()) -> boolean().
is_os_process_alive(#{os_pid := OsPid}) ->
    os_process_alive(OsPid).

%% @doc `M:F(A...)' on a BEAM node's VM.
-spec beam_call(map(), module(), atom(), [term()]) -> term().
beam_call(#{kind := beam, peer := Peer}, M, F, A) ->
    peer_call(Peer, M, F, A).

%% @doc The ids of some nodes.
-spec ids([map()]) -> [binary()].
ids(Nodes) ->
    [Id || #{id := Id} <- Nodes].

%% @doc A UDP port on 127.0.0.1 that nothing listens on (the system's choice, closed again at
%% once), for a node that must start where nobody answers yet, or at a known address.
-spec free_port() -> inet:port_number().
free_port() ->
    {ok, Socket} = gen_udp:open(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(Socket),
    ok = gen_udp:close(Socket),
    Port.

%% @doc A node's counters under the same names for both kinds: a BEAM node's
%% `macula_routing_server:stats/1', a Rust node's `ctl status --json' (its numbers and booleans,
%% e.g. `peers', `joined', `suspects', `lookups', `lookup_p99_us').
-spec stats(map()) -> #{atom() => integer() | boolean()}.
stats(#{kind := beam} = Node) ->
    beam_call(Node, macula_routing_server, stats, [macula_routing_server]);
stats(#{kind := rust} = Node) ->
    {0, Json} = ctl(Node, ["status", "--json"]),
    {match, Fields} = re:run(Json, <<"\"([a-z0-9_]+)\":(true|false|[0-9]+)[,}]">>,
                             [global, {capture, all_but_first, binary}]),
    maps:from_list([{binary_to_atom(Name), json_scalar(Value)} || [Name, Value] <- Fields]).

json_scalar(<<"true">>) -> true;
json_scalar(<<"false">>) -> false;
json_scalar(Digits) -> binary_to_integer(Digits).

%% @doc Advertises `Service' from a node at the endpoint `https://<name>.test:443' for `Ttl'
%% seconds (BEAM: `publish_to_dht' with the node's own id; Rust: `ctl advertise').
-spec advertise(map(), binary(), pos_integer()) -> ok | {error, term()}.
advertise(#{kind := beam, id := Id} = Node, Service, Ttl) ->
    Provider = #{node_id => Id, endpoint => list_to_binary(endpoint(Node))},
    %% The last argument (k) is unused: the server replicates to its own k closest.
    beam_call(Node, macula_service_registry, publish_to_dht,
              [macula_routing_server, Service, Provider, Ttl, 1]);
advertise(#{kind := rust} = Node, Service, Ttl) ->
    case ctl(Node, ["advertise", binary_to_list(Service), endpoint(Node),
                    "--ttl", integer_to_list(Ttl)]) of
        {0, _} -> ok;
        Failed -> {error, Failed}
    end.

endpoint(#{name := Name}) ->
    "https://" ++ Name ++ ".test:443".

%% @doc The sorted node ids of the providers of `Service' a node finds wanting `Want' of them
%% (a network lookup unless it holds that many itself): BEAM `query_dht_for_service', Rust
%% `ctl discover --json'.
-spec discover(map(), binary(), pos_integer()) -> {ok, [binary()]} | {error, term()}.
discover(#{kind := beam} = Node, Service, Want) ->
    case beam_call(Node, macula_service_registry, query_dht_for_service,
                   [macula_routing_server, Service, Want]) of
        {ok, Providers} -> {ok, lists:sort([Id || #{node_id := Id} <- Providers])};
        Error -> {error, Error}
    end;
discover(#{kind := rust} = Node, Service, Want) ->
    Args = ["discover", binary_to_list(Service), "--want", integer_to_list(Want), "--json"],
    case ctl(Node, Args) of
        {0, Json} ->
            {match, Hex} = re:run(Json, <<"\"node_id\":\"([0-9a-f]{64})\"">>,
                                  [global, {capture, all_but_first, binary}]),
            {ok, lists:sort([binary:decode_hex(H) || [H] <- Hex])};
        {1, Output} = Failed ->
            %% Exit 1 also reports failures; only "no provider" means an empty answer.
            case binary:match(Output, <<"no provider of">>) of
                nomatch -> {error, Failed};
                _ -> {ok, []}
            end;
        Failed ->
            {error, Failed}
    end.

%%--------------------------------------------------------------------------------------------
%% rust-node commands
%%--------------------------------------------------------------------------------------------

%% @doc `rust-node ctl --socket S Args...' on a Rust node: `{ExitStatus | timeout, Output}'
%% (stdout and stderr).
-spec ctl(map(), [string()]) -> {integer() | timeout, binary()}.
ctl(#{kind := rust, socket := Socket, harness := Harness}, Args) ->
    command(Harness, rust_node_binary(), ["ctl", "--socket", Socket | Args], ?COMMAND_TIMEOUT_MS).

%% @doc `hostile_peer Args...' to completion within `Timeout' ms: `{ExitStatus | timeout, Output}'.
-spec hostile_peer(pid(), [string()], pos_integer()) -> {integer() | timeout, binary()}.
hostile_peer(Harness, Args, Timeout) ->
    command(Harness, hostile_peer_binary(), Args, Timeout).

%% Runs `Binary Args...' to completion within `Timeout' ms (killed by its pid after that),
%% recorded with the owner while it runs.
-spec command(pid(), string(), [string()], pos_integer()) -> {integer() | timeout, binary()}.
command(Harness, Binary, Args, Timeout) ->
    Port = open_port({spawn_executable, Binary},
                     [{args, Args}, exit_status, binary, use_stdio, stderr_to_stdout]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    gen_server:cast(Harness, {command, OsPid, running}),
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    Result = collect(Port, OsPid, Deadline, []),
    gen_server:cast(Harness, {command, OsPid, done}),
    Result.

collect(Port, OsPid, Deadline, Acc) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, Data}} -> collect(Port, OsPid, Deadline, [Data | Acc]);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(lists:reverse(Acc))}
    after Left ->
        kill("KILL", OsPid),
        receive {Port, {exit_status, _}} -> ok after 1000 -> catch port_close(Port) end,
        flush_port(Port),
        {timeout, iolist_to_binary(lists:reverse(Acc))}
    end.

flush_port(Port) ->
    receive {Port, _} -> flush_port(Port) after 0 -> ok end.

%% A string field of the JSON object `rust-node' prints (a flat object of known fields).
json_string(Field, Json) ->
    Pattern = <<"\"", Field/binary, "\":\"([^\"]*)\"">>,
    {match, [Value]} = re:run(Json, Pattern, [{capture, all_but_first, binary}]),
    Value.

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

%%--------------------------------------------------------------------------------------------
%% gen_server: the owner
%%--------------------------------------------------------------------------------------------

init([]) ->
    %% A peer's exit (e.g. its VM killed) must not take the owner down.
    process_flag(trap_exit, true),
    Dir = string:trim(os:cmd("mktemp -d -t macula_ct.XXXXXXXX")),
    true = filelib:is_dir(Dir),
    {ok, #owner{dir = Dir}}.

handle_call(dir, _From, #owner{dir = Dir} = State) ->
    {reply, Dir, State};
%% A failed start is the caller's error; the owner must live on to stop what it already started.
handle_call(start_peer, _From, #owner{peers = Peers} = State) ->
    Ebin = filename:dirname(code:which(macula_routing_server)),
    %% `peer' passes `-user peer', which runs no shell; adding `-noshell' to it makes the
    %% boot hang on OTP 25 with a standard_io connection.
    case catch peer:start_link(#{connection => standard_io, exec => os:find_executable("erl"),
                                 args => ["-pa", Ebin]}) of
        {ok, Peer, _Node} ->
            case catch list_to_integer(peer_call(Peer, os, getpid, [])) of
                OsPid when is_integer(OsPid) ->
                    {reply, {ok, Peer, OsPid}, State#owner{peers = Peers#{Peer => OsPid}}};
                Error ->
                    catch peer:stop(Peer),
                    {reply, {error, {peer_os_pid, Error}}, State}
            end;
        Error ->
            {reply, {error, {peer_start, Error}}, State}
    end;
handle_call({start_rust, Name, Args}, _From, #owner{rust = Rust} = State) ->
    case catch open_port({spawn_executable, rust_node_binary()},
                         [{args, Args}, exit_status, binary, {line, 4096}, stderr_to_stdout]) of
        Port when is_port(Port) ->
            {os_pid, OsPid} = erlang:port_info(Port, os_pid),
            {reply, {ok, OsPid}, State#owner{rust = Rust#{Port => {Name, OsPid}}}};
        Error ->
            {reply, {error, {rust_node_start, Error}}, State}
    end;
handle_call({stop_rust, OsPid}, _From, #owner{rust = Rust} = State) ->
    Ports = [Port || {Port, {_, Pid}} <- maps:to_list(Rust), Pid =:= OsPid],
    {reply, ok, State#owner{rust = maps:without(Ports, stop_rust_ports(Ports, Rust))}};
handle_call(stop_all, _From, #owner{dir = Dir, peers = Peers, rust = Rust,
                                    commands = Commands} = State) ->
    _ = [stop_peer(Peer, OsPid) || {Peer, OsPid} <- maps:to_list(Peers)],
    _ = stop_rust_ports(maps:keys(Rust), Rust),
    _ = [kill("KILL", OsPid) || OsPid <- maps:keys(Commands)],
    ok = file:del_dir_r(Dir),
    {reply, ok, State#owner{peers = #{}, rust = #{}, commands = #{}}}.

handle_cast({command, OsPid, running}, #owner{commands = Commands} = State) ->
    {noreply, State#owner{commands = Commands#{OsPid => true}}};
handle_cast({command, OsPid, done}, #owner{commands = Commands} = State) ->
    {noreply, State#owner{commands = maps:remove(OsPid, Commands)}}.

%% A Rust node's output (warnings and errors) goes to the case's log.
handle_info({Port, {data, {_, Line}}}, #owner{rust = Rust} = State) ->
    case Rust of
        #{Port := {Name, _}} -> ct:log("~ts: ~ts", [Name, Line]);
        _ -> ok
    end,
    {noreply, State};
handle_info({Port, {exit_status, Status}}, #owner{rust = Rust} = State) ->
    case Rust of
        #{Port := {Name, OsPid}} ->
            ct:log("~ts (pid ~b) exited with status ~b", [Name, OsPid, Status]);
        _ -> ok
    end,
    {noreply, State};
handle_info({'EXIT', _From, _Reason}, State) ->
    {noreply, State}.

%% SIGCONT (a stopped process ignores SIGTERM until resumed), then SIGTERM; SIGKILL for any
%% that has not exited within the grace period. Returns the map without the stopped ports.
stop_rust_ports(Ports, Rust) ->
    Running = [{Port, maps:get(Port, Rust)} || Port <- Ports, erlang:port_info(Port) =/= undefined],
    _ = [begin kill("CONT", OsPid), kill("TERM", OsPid) end || {_, {_, OsPid}} <- Running],
    Deadline = erlang:monotonic_time(millisecond) + ?TERM_GRACE_MS,
    _ = [await_exit(Port, OsPid, Deadline) || {Port, {_, OsPid}} <- Running],
    maps:without(Ports, Rust).

await_exit(Port, OsPid, Deadline) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {exit_status, _}} -> ok
    after Left ->
        kill("KILL", OsPid),
        receive {Port, {exit_status, _}} -> ok after 2000 -> catch port_close(Port) end
    end.

%% `peer:stop/1' halts the VM; if the peer process is gone (its VM was killed) or the VM
%% outlives the stop, its OS pid is killed.
stop_peer(Peer, OsPid) ->
    catch peer:stop(Peer),
    case os_process_alive(OsPid) of
        true -> kill("KILL", OsPid);
        false -> ok
    end.

%%--------------------------------------------------------------------------------------------
%% OS processes
%%--------------------------------------------------------------------------------------------

kill(Signal, OsPid) when is_integer(OsPid) ->
    _ = os:cmd("kill -" ++ Signal ++ " " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    ok.

os_process_alive(OsPid) ->
    os:cmd("kill -0 " ++ integer_to_list(OsPid) ++ " 2>/dev/null && echo yes") =:= "yes\n".

peer_call(Peer, M, F, A) ->
    peer:call(Peer, M, F, A, ?PEER_CALL_TIMEOUT_MS).
