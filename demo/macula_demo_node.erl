%% @doc One node of the demo's cluster, BEAM or Rust, behind one interface: start, advertise,
%% discover, remove, stop.
%%
%% A BEAM node is a peer VM (`peer', `connection => standard_io') driven through
%% `macula_demo_peer'. A Rust node is a `rust-node run' OS process, driven through its control
%% socket with `rust-node ctl'. A node is a map; the demo reads its `name', `kind', `id' (32
%% bytes) and `addr' ("127.0.0.1:PORT").
-module(macula_demo_node).

-export([start/3, advertise/3, discover/2, remove/2, call/3, peer_count/1, stop/1]).

-export_type([node_/0, env/0]).

-type node_() :: #{name := string(), kind := beam | rust, id := binary(), addr := string(),
                   atom() => term()}.
%% A node being started (no `id' or `addr' yet), or any node.
-type starting() :: #{name := string(), kind := beam | rust, atom() => term()}.
%% Where a node keeps its files, whom it joins through, and the `rust-node' binary.
-type env() :: #{dir := file:filename(), bootstrap := [string()], rust_node := file:filename()}.
%% What `rust-node ctl' printed, or how it failed.
-type ctl_result() :: {ok, Stdout :: binary()}
                    | {error, {ExitStatus :: integer(), Output :: binary()}
                            | {timeout, Output :: binary()}}.

%% Providers a discovery asks for: the demo never runs more than two of a service at once.
-define(WANT, 2).
%% Bound of one call into a node (a network lookup answers within 5 s).
-define(CALL_TIMEOUT, 10000).
%% How long a started node may take to be ready, and a stopped one to exit.
-define(START_TIMEOUT, 10000).
-define(STOP_TIMEOUT, 5000).

%% @doc Starts node `Name' listening on 127.0.0.1 (port 0), joining through `bootstrap' (empty
%% for the first node), with its key, log and control socket in `dir'. Raises if it does not come
%% up; whatever was started is stopped first.
-spec start(beam | rust, string(), env()) -> node_().
start(beam, Name, #{dir := Dir, bootstrap := Bootstrap}) ->
    Args = ["-pa", ebin(macula_routing_server), "-pa", ebin(?MODULE)],
    {ok, Peer, _NodeName} = peer:start(#{connection => standard_io, args => Args}),
    Node = #{name => Name, kind => beam, peer => Peer},
    Config = #{listen => {{127, 0, 0, 1}, 0}, bootstrap => Bootstrap,
               identity => file(Dir, Name, ".key"), log => file(Dir, Name, ".log")},
    up(Node, fun() ->
                 {ok, Id, Addr} = peer_call(Node, start, [Config]),
                 %% It joins in the background; started means joined, as for a Rust node, so the
                 %% next node's bootstrap lookup meets this one.
                 ok = await_joined(Node, Bootstrap, now_ms() + ?START_TIMEOUT),
                 Node#{id => Id, addr => Addr}
             end);
start(rust, Name, #{dir := Dir, bootstrap := Bootstrap, rust_node := Exe}) ->
    Ctl = file(Dir, Name, ".sock"),
    Run = ["run", "--listen", "127.0.0.1:0", "--identity", file(Dir, Name, ".key"),
           "--ctl", Ctl, "--log", "warn" | lists:append([["--bootstrap", A] || A <- Bootstrap])],
    %% `exec' makes the shell's pid rust-node's own (the one in the pid file, which the demo
    %% script uses after an interrupted run, and the one that gets SIGTERM); $0 is the file
    %% prefix of the node, its log goes to `<prefix>.log'.
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", "echo $$ >\"$0.pid\"; exec \"$@\" 2>\"$0.log\"",
                              filename:join(Dir, Name), Exe | Run]},
                      {line, 1024}, binary, exit_status]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    Node = #{name => Name, kind => rust, port => Port, os_pid => OsPid, ctl => Ctl, exe => Exe},
    up(Node, fun() ->
                 ok = await_listening(Port),
                 {ok, Status} = ctl(Node, ["status", "--json"]),
                 Node#{id => binary:decode_hex(json_string(<<"id">>, Status)),
                       addr => binary_to_list(json_string(<<"addr">>, Status))}
             end).

%% @doc Publishes `Node' as a provider of `Service' for `Ttl' seconds; a BEAM node also serves it
%% with a local handler, a Rust node republishes it until removed.
-spec advertise(node_(), binary(), pos_integer()) -> ok | {error, term()}.
advertise(#{kind := beam} = Node, Service, Ttl) ->
    peer_call(Node, advertise, [Service, endpoint(Node), Ttl]);
advertise(#{kind := rust} = Node, Service, Ttl) ->
    ok_or_error(ctl(Node, ["advertise", Service, endpoint(Node), "--ttl", integer_to_list(Ttl)])).

%% @doc The sorted `node_id's of the providers of `Service' that `Node' finds.
-spec discover(node_(), binary()) -> {ok, [binary()]} | {error, term()}.
discover(#{kind := beam} = Node, Service) ->
    peer_call(Node, provider_ids, [Service]);
discover(#{kind := rust} = Node, Service) ->
    case ctl(Node, ["discover", Service, "--want", integer_to_list(?WANT), "--json"]) of
        {ok, Json} ->
            Ids = re:run(Json, "\"node_id\":\"([0-9a-f]{64})\"",
                         [global, {capture, all_but_first, binary}]),
            {ok, lists:sort([binary:decode_hex(Hex) || [Hex] <- matches(Ids)])};
        {error, {1, <<"rust-node: no provider of", _/binary>>}} ->
            {ok, []};
        {error, _} = Error ->
            Error
    end.

%% @doc Withdraws `Node''s provider of `Service' from the whole DHT.
-spec remove(node_(), binary()) -> ok | {error, term()}.
remove(#{kind := beam} = Node, Service) ->
    peer_call(Node, remove, [Service]);
remove(#{kind := rust} = Node, Service) ->
    ok_or_error(ctl(Node, ["remove", Service])).

%% @doc Runs the handler a BEAM node serves `Service' with, on that node.
-spec call(node_(), binary(), map()) -> term().
call(#{kind := beam} = Node, Service, Args) ->
    peer_call(Node, call, [Service, Args]).

%% @doc How many nodes `Node' has in its routing table.
-spec peer_count(node_()) -> non_neg_integer().
peer_count(#{kind := beam} = Node) ->
    peer_call(Node, peer_count, []);
peer_count(#{kind := rust} = Node) ->
    {ok, Status} = ctl(Node, ["status", "--json"]),
    {match, [Peers]} = re:run(Status, "\"peers\":([0-9]+)", [{capture, all_but_first, list}]),
    list_to_integer(Peers).

%% @doc Stops the node: `peer:stop/1' for a VM; SIGTERM for a Rust node, then its exit status
%% (SIGKILL if it has not exited in time).
-spec stop(starting()) -> ok | {error, term()}.
stop(#{kind := beam, peer := Peer}) ->
    peer:stop(Peer);
stop(#{kind := rust, port := Port, os_pid := OsPid}) ->
    %% A closed port means the process is gone and its exit status was taken (a failed start).
    case erlang:port_info(Port) of
        undefined ->
            {error, exited_before_stop};
        _Open ->
            kill("TERM", OsPid),
            receive
                {Port, {exit_status, 0}} -> ok;
                {Port, {exit_status, Status}} -> {error, {exit_status, Status}}
            after ?STOP_TIMEOUT ->
                kill("KILL", OsPid),
                {error, {no_exit_after_sigterm, ?STOP_TIMEOUT}}
            end
    end.

%%====================================================================
%% Internal
%%====================================================================

%% Runs `Ready' to finish starting `Node'; if it fails, stops the node and re-raises.
-spec up(starting(), fun(() -> node_())) -> node_().
up(Node, Ready) ->
    try
        Ready()
    catch
        Class:Reason:Stack ->
            _ = stop(Node),
            erlang:raise(Class, Reason, Stack)
    end.

-spec ebin(module()) -> file:filename_all().
ebin(Module) ->
    filename:dirname(code:which(Module)).

-spec file(file:filename(), string(), string()) -> file:filename_all().
file(Dir, Name, Ext) ->
    filename:join(Dir, Name ++ Ext).

-spec endpoint(node_()) -> binary().
endpoint(#{addr := Addr}) ->
    list_to_binary("https://" ++ Addr).

-spec peer_call(starting(), atom(), [term()]) -> term().
peer_call(#{peer := Peer}, Function, Args) ->
    peer:call(Peer, macula_demo_peer, Function, Args, ?CALL_TIMEOUT).

-spec await_joined(starting(), [string()], integer()) ->
          ok | {error, {not_joined, [string()]}}.
await_joined(_Node, [], _Deadline) ->
    ok;
await_joined(Node, Bootstrap, Deadline) ->
    case peer_call(Node, peer_count, []) of
        0 ->
            case now_ms() < Deadline of
                true -> timer:sleep(50), await_joined(Node, Bootstrap, Deadline);
                false -> {error, {not_joined, Bootstrap}}
            end;
        _ ->
            ok
    end.

%% rust-node prints this line once its control socket serves.
-spec await_listening(port()) -> ok | {error, {exited, integer()} | not_listening}.
await_listening(Port) ->
    receive
        {Port, {data, {eol, <<"rust-node listening on ", _/binary>>}}} -> ok;
        {Port, {exit_status, Status}} -> {error, {exited, Status}}
    after ?START_TIMEOUT ->
        {error, not_listening}
    end.

%% Runs `rust-node ctl --socket S Args...': `{ok, Stdout}' on exit status 0.
-spec ctl(starting(), [string() | binary()]) -> ctl_result().
ctl(#{exe := Exe, ctl := Socket}, Args) ->
    Port = open_port({spawn_executable, Exe}, [{args, ["ctl", "--socket", Socket | Args]},
                                               binary, exit_status, stderr_to_stdout]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    collect(Port, OsPid, <<>>, now_ms() + ?CALL_TIMEOUT).

-spec collect(port(), non_neg_integer(), binary(), integer()) -> ctl_result().
collect(Port, OsPid, Output, Deadline) ->
    Left = max(0, Deadline - now_ms()),
    receive
        {Port, {data, Data}} -> collect(Port, OsPid, <<Output/binary, Data/binary>>, Deadline);
        {Port, {exit_status, 0}} -> {ok, Output};
        {Port, {exit_status, Status}} -> {error, {Status, string:trim(Output)}}
    after Left ->
        kill("KILL", OsPid),
        {error, {timeout, Output}}
    end.

-spec ok_or_error(ctl_result()) -> ok | {error, term()}.
ok_or_error({ok, _Output}) -> ok;
ok_or_error({error, _} = Error) -> Error.

-spec kill(string(), non_neg_integer()) -> ok.
kill(Signal, OsPid) ->
    _ = os:cmd("kill -" ++ Signal ++ " " ++ integer_to_list(OsPid)),
    ok.

-spec json_string(binary(), binary()) -> binary().
json_string(Field, Json) ->
    {match, [Value]} = re:run(Json, <<"\"", Field/binary, "\":\"([^\"]*)\"">>,
                              [{capture, all_but_first, binary}]),
    Value.

-spec matches({match, [[binary()]]} | nomatch) -> [[binary()]].
matches({match, Groups}) -> Groups;
matches(nomatch) -> [].

-spec now_ms() -> integer().
now_ms() ->
    erlang:monotonic_time(millisecond).
