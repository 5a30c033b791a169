%% @doc Passes the log lines of the NIF's embedded runtime (the Rust node's `tracing' events) to
%% OTP's `logger'.
%%
%% One process per VM, registered as `macula_dht_log'. It registers itself with the NIF
%% (`macula_dht_nif:log_forward/2'), receives `{macula_dht_log, Level, Target, Message, Fields}'
%% messages, and logs each at the mapped level (`error' -> error, `warn' -> warning, `info' ->
%% info, `debug' and `trace' -> debug) as "macula_dht: Message key=value ...", with metadata
%% `#{target => Target, fields => #{Key => Value}}' (binaries), and no domain: OTP's default
%% handler drops events of other domains than OTP's, and an operator must see these. When the
%% NIF's bounded queue overflowed it logs a warning with the number of lines dropped.
%%
%% The NIF formats only what `logger' would let through: this process tells it the most verbose
%% level `logger:allow/2' grants this module (the primary level, or a module level set for
%% `macula_dht_log'), and checks again every few seconds. So `logger:set_module_level(
%% macula_dht_log, debug)' turns the runtime's debug lines on. Libraries under the runtime (QUIC,
%% TLS) are forwarded at warning and error only.
%%
%% `macula_routing_server' starts it in network mode (`ensure_started/0'); it monitors the server
%% that started it (or the last one that asked for it) and stops when that server stops.
-module(macula_dht_log).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([ensure_started/0, level/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([rust_level/0]).

%% A level of the runtime's `tracing' events, as the NIF names it.
-type rust_level() :: error | warn | info | debug | trace.

%% How often the level `logger' allows is checked again.
-define(REFRESH_MS, 5000).
%% Starts tried when the registered process is stopping at the moment it is asked for.
-define(START_TRIES, 3).

-record(state, {owner :: pid(),
                monitor :: reference(),
                %% what the NIF was last told to forward
                level :: rust_level() | none}).

%%--------------------------------------------------------------------------------------------
%% API
%%--------------------------------------------------------------------------------------------

%% @doc Makes sure the process runs, and ties it to the calling process: it stops when the caller
%% exits. A failure (the NIF cannot install its log subscriber) is logged and returned.
-spec ensure_started() -> {ok, pid()} | {error, term()}.
ensure_started() ->
    case ensure_started(self(), ?START_TRIES) of
        {ok, _} = Started ->
            Started;
        {error, Why} = Error ->
            ?LOG_WARNING("macula_dht: the runtime's log lines will not reach logger: ~tp", [Why]),
            Error
    end.

%% @doc The `logger' level of a runtime level.
-spec level(rust_level()) -> logger:level().
level(error) -> error;
level(warn) -> warning;
level(info) -> info;
level(debug) -> debug;
level(trace) -> debug.

-spec ensure_started(pid(), non_neg_integer()) -> {ok, pid()} | {error, term()}.
ensure_started(_Owner, 0) ->
    {error, not_started};
ensure_started(Owner, Tries) ->
    case gen_server:start({local, ?MODULE}, ?MODULE, Owner, []) of
        {ok, Pid} ->
            {ok, Pid};
        {error, {already_started, Pid}} ->
            %% It may be stopping with its previous owner: then start a new one.
            try gen_server:call(Pid, {adopt, Owner}) of
                ok -> {ok, Pid}
            catch
                exit:_ -> ensure_started(Owner, Tries - 1)
            end;
        {error, _} = Error ->
            Error
    end.

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

-spec init(pid()) -> {ok, #state{}} | {stop, term()}.
init(Owner) ->
    Level = allowed_level(),
    case macula_dht_nif:log_forward(self(), Level) of
        ok ->
            erlang:send_after(?REFRESH_MS, self(), refresh),
            {ok, #state{owner = Owner, monitor = erlang:monitor(process, Owner), level = Level}};
        {error, Why} ->
            {stop, Why}
    end.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, ok | {error, unknown_request}, #state{}}.
handle_call({adopt, Owner}, _From, #state{monitor = Monitor} = State) when is_pid(Owner) ->
    erlang:demonitor(Monitor, [flush]),
    {reply, ok, State#state{owner = Owner, monitor = erlang:monitor(process, Owner)}};
handle_call(_Unknown, _From, State) ->
    {reply, {error, unknown_request}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Unknown, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_info({macula_dht_log, RustLevel, Target, Message, Fields}, State)
  when is_binary(Target), is_binary(Message), is_list(Fields) ->
    case lists:member(RustLevel, [error, warn, info, debug, trace]) of
        true -> log(RustLevel, Target, Message, Fields);
        false -> ok
    end,
    {noreply, State};
handle_info({macula_dht_log_dropped, Count}, State) when is_integer(Count) ->
    ?LOG_WARNING("macula_dht: ~b log lines of the runtime dropped (its queue was full)", [Count]),
    {noreply, State};
handle_info(refresh, #state{level = Level} = State) ->
    erlang:send_after(?REFRESH_MS, self(), refresh),
    case allowed_level() of
        Level ->
            {noreply, State};
        Changed ->
            ok = macula_dht_nif:log_forward(self(), Changed),
            {noreply, State#state{level = Changed}}
    end;
handle_info({'DOWN', Monitor, process, _Owner, _Why}, #state{monitor = Monitor} = State) ->
    {stop, normal, State};
handle_info(_Unknown, State) ->
    {noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    macula_dht_nif:log_stop(self()).

%%--------------------------------------------------------------------------------------------
%% Internals
%%--------------------------------------------------------------------------------------------

%% The most verbose runtime level whose mapped level `logger' lets this module log.
-spec allowed_level() -> rust_level() | none.
allowed_level() ->
    Allowed = [Rust || {Rust, Level} <- [{trace, debug}, {info, info}, {warn, warning},
                                         {error, error}],
                       logger:allow(Level, ?MODULE)],
    case Allowed of
        [Most | _] -> Most;
        [] -> none
    end.

%% Through the macro, which checks the level against this module's, as `allowed_level/0' does.
-spec log(rust_level(), binary(), binary(), list()) -> ok.
log(RustLevel, Target, Message, Fields) ->
    Level = level(RustLevel),
    Valid = [{Key, Value} || {Key, Value} <- Fields, is_binary(Key), is_binary(Value)],
    Pairs = [[$\s, Key, $=, Value] || {Key, Value} <- Valid],
    ?LOG(Level, "macula_dht: ~ts~ts", [Message, Pairs],
         #{target => Target, fields => maps:from_list(Valid)}).
